"""Fast exact incremental decoding for ESPnet's Transformer decoder.

:class:`FastTransformerDecoder` is ESPnet's ``TransformerDecoder`` with the search
interface (``score`` / ``batch_score`` / ``forward_one_step``, used by ESPnet's
``BeamSearch`` / ``BatchBeamSearch``) re-implemented to give the same scores with less work:

* the source-attention keys and values of the encoder output (memory) are projected once
  per utterance and reused for every hypothesis and step (:class:`MemoryKVCache`); a memory
  expanded over the beam (``x.expand(n_hyp, T, D)``, stride 0, which is what
  ``BatchBeamSearch`` passes) is projected once, not once per hypothesis, and its queries
  are scored against it with one matrix product per head;
* the self-attention keys and values of the prefix are carried in the decoding state
  (:class:`DecoderState`), so a step projects only the new token (ESPnet re-projects the
  whole prefix every step).

The memory cache is keyed on the memory's storage (held by a weak reference: the cache
never outlives the tensor, and a new tensor allocated at the same address is a different
storage), its view geometry, its in-place version counter and the projection weights;
``init_state`` (called by ESPnet at the start of every utterance) clears it. Under
autograd (grad enabled) nothing is cached. Tensors created under ``torch.inference_mode``
have no version counter: an in-place change of such a memory between two calls without an
``init_state`` in between is not seen (ESPnet's search never does that).

:meth:`~FastTransformerDecoder.forward_one_step` keeps ESPnet's cache semantics (one
``(batch, t-1, d)`` layer output per layer) and uses the cached memory keys and values too.
If the installed ESPnet's own ``TransformerDecoder`` already projects the memory once
(probed by behaviour, :func:`espnet_caches_memory_kv`), a dense decoder made of ESPnet's
layers uses ESPnet's implementation instead of ours.

The layers may be :class:`~espnet_prune.decoder_layer.PrunedDecoderLayer` with removed
sublayers and fewer heads / units: :class:`~espnet_prune.pruned_decoder.PrunedTransformerDecoder`
(``decoder: pruned_transformer``) only adds those per-layer sizes.
"""

from __future__ import annotations

import functools
import math
import weakref
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from espnet.nets.pytorch_backend.transformer.attention import MultiHeadedAttention
from espnet.nets.pytorch_backend.transformer.decoder_layer import DecoderLayer
from espnet.nets.pytorch_backend.transformer.embedding import (
    PositionalEncoding,
    ScaledPositionalEncoding,
)
from espnet2.asr.decoder.transformer_decoder import TransformerDecoder

from espnet_prune.decoder_layer import (
    apply_dropout,
    apply_module,
    cached_query,
    is_plain_linear,
    run_sublayers,
)
from espnet_prune.structure import TRANSFORMER_PARAMS, DecoderDims, transformer_options

Tensor = torch.Tensor
#: per layer, the source-attention ``(K, V)`` of a memory (None without source attention)
LayerKV = List[Optional[Tuple[Tensor, Tensor]]]


# --------------------------------------------------------------------------- memory K/V cache


def tensor_version(t: Tensor) -> Optional[int]:
    """In-place version counter of ``t`` (None for inference tensors, which have none)."""
    try:
        return t._version
    except RuntimeError:
        return None


class _CacheEntry:
    """The keys and values of one memory, and what they were computed from."""

    __slots__ = ("storage_ref", "key", "kv", "__weakref__")

    def __init__(self, storage_ref: Any, key: Tuple, kv: LayerKV) -> None:
        self.storage_ref = storage_ref
        self.key = key
        self.kv = kv


class MemoryKVCache:
    """Source-attention keys and values of one memory, for every layer of a decoder.

    Holds one memory at a time; never pickled or deep-copied (a copy starts empty). See
    the module docstring for the cache key.
    """

    def __init__(self) -> None:
        self._entry: Optional[_CacheEntry] = None

    @property
    def empty(self) -> bool:
        return self._entry is None

    def clear(self) -> None:
        self._entry = None

    def __getstate__(self) -> Dict[str, Any]:
        return {"_entry": None}

    @staticmethod
    def _weights_key(layers: Sequence[DecoderLayer]) -> Tuple:
        key = []
        for layer in layers:
            att = layer.src_attn
            if att is None:
                continue
            for mod in (att.linear_k, att.linear_v, att.k_norm):
                for p in mod.parameters(recurse=False):
                    key.append((p.data_ptr(), tensor_version(p), p.dtype))
        return tuple(key)

    @staticmethod
    def project(layers: Sequence[DecoderLayer], rows: Tensor) -> LayerKV:
        """Per layer ``(K, V)`` ``(U, heads, T, d_k)`` of memory rows ``(U, T, d)``, uncached."""
        out: LayerKV = []
        for layer in layers:
            att = layer.src_attn
            if att is None:
                out.append(None)
                continue
            k = att.k_norm(split_heads(att.linear_k(rows), att.h, att.d_k))
            v = split_heads(att.linear_v(rows), att.h, att.d_k)
            out.append((k, v))
        return out

    def get(self, layers: Sequence[DecoderLayer], rows: Tensor) -> LayerKV:
        """:meth:`project`, cached unless grad is enabled."""
        if torch.is_grad_enabled():
            return self.project(layers, rows)
        try:
            storage = rows.untyped_storage()
        except Exception:  # noqa: BLE001 - tensors without storage: no caching
            return self.project(layers, rows)
        shape, stride = tuple(rows.shape), tuple(rows.stride())
        if shape[0] == 1:
            stride = stride[1:]  # a row of an expansion and an unsqueezed row are the same
        key = (rows.storage_offset(), shape, stride, rows.dtype, rows.device, tensor_version(rows),
               self._weights_key(layers))
        entry = self._entry
        if entry is not None and entry.key == key and entry.storage_ref() is storage:
            return entry.kv
        kv = self.project(layers, rows)
        cache_ref = weakref.ref(self)
        entry_ref: List[Any] = []

        def forget(_ref: Any) -> None:
            cache = cache_ref()
            if cache is not None and entry_ref and cache._entry is entry_ref[0]():
                cache._entry = None

        entry = _CacheEntry(weakref.ref(storage, forget), key, kv)
        entry_ref.append(weakref.ref(entry))
        self._entry = entry
        return kv


def memory_rows(xs: Tensor, n_hyps: int) -> Tuple[Tensor, int]:
    """Distinct memory rows for ``n_hyps`` hypotheses and the hypotheses per row.

    ``xs`` is ``(B, T, d)`` with ``B == n_hyps`` (one row per hypothesis; a stride-0
    expansion counts as one row), or ``B`` dividing ``n_hyps`` (hypothesis
    ``u * g + j`` uses row ``u``).
    """
    if xs.dim() != 3:
        raise ValueError(f"memory must be (batch, frames, dim), got shape {tuple(xs.shape)}")
    n = xs.size(0)
    if n == 0 or n_hyps % n:
        raise ValueError(f"memory with {n} rows for {n_hyps} hypotheses")
    if n > 1 and xs.stride(0) == 0:
        xs = xs[:1]
    return xs, n_hyps // xs.size(0)


# --------------------------------------------------------------------------- attention kernels


def split_heads(x: Tensor, heads: int, d_k: int) -> Tensor:
    """``(B, n, heads*d_k)`` -> ``(B, heads, n, d_k)``."""
    return x.view(x.size(0), x.size(1), heads, d_k).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """``(B, heads, n, d_k)`` -> ``(B, n, heads*d_k)``."""
    b, h, n, dk = x.shape
    return x.transpose(1, 2).reshape(b, n, h * dk)


def fused_qkv(att: MultiHeadedAttention) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
    """Concatenated q/k/v weight ``(3*H*d_k, d)`` and bias of ``att``, cached on the module.

    None when the projections are not plain linears or autograd is on. The cache is keyed
    on the weights' storage and in-place versions, so changed weights are re-read.
    """
    lins = (att.linear_q, att.linear_k, att.linear_v)
    if torch.is_grad_enabled() or not all(is_plain_linear(m) for m in lins):
        return None
    params = [p for m in lins for p in (m.weight, m.bias) if p is not None]
    key = tuple((p.data_ptr(), tensor_version(p), p.dtype, p.device) for p in params)
    cached = att.__dict__.get("_espnet_prune_qkv")
    if cached is None or cached[0] != key:
        weight = torch.cat([m.weight for m in lins], dim=0)
        bias = None
        if all(m.bias is not None for m in lins):
            bias = torch.cat([m.bias for m in lins], dim=0)
        elif any(m.bias is not None for m in lins):
            return None
        cached = (key, weight, bias)
        att.__dict__["_espnet_prune_qkv"] = cached
    return cached[1], cached[2]


def masked_softmax(scores: Tensor, masked: Optional[Tensor]) -> Tensor:
    """ESPnet's masking: masked scores to the dtype minimum, softmax, masked weights to 0."""
    if masked is None:
        return torch.softmax(scores, dim=-1)
    scores = scores.masked_fill(masked, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1).masked_fill(masked, 0.0)


def source_attention(att: MultiHeadedAttention, h: Tensor, kv: Tuple[Tensor, Tensor],
                     mask: Optional[Tensor], group: int) -> Tensor:
    """Source attention of queries ``h`` ``(B, n, d)`` on cached ``K, V`` ``(U, H, T, d_k)``.

    Hypothesis ``u * group + j`` attends to memory row ``u`` (``B = U * group``).
    ``mask`` is ``(1 | U | B, 1, T)`` (True = valid frame) or None.
    """
    k, v = kv
    b, n, _ = h.shape
    u, heads, t, dk = k.shape
    q = apply_module(att.linear_q, h).view(u, group, n, heads, dk).permute(0, 3, 1, 2, 4)
    q = att.q_norm(q.reshape(u, heads, group * n, dk))
    scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(dk)  # (U, H, g*n, T)
    masked = None
    if mask is not None:
        if mask.dim() != 3 or mask.size(1) != 1 or mask.size(-1) != t:
            raise ValueError(f"memory mask must be (batch, 1, {t}), got {tuple(mask.shape)}")
        mb = mask.size(0)
        if mb == b:
            masked = mask.view(u, 1, group, 1, t).eq(0)
        elif mb in (1, u):
            masked = mask.view(mb, 1, 1, 1, t).eq(0)
        else:
            raise ValueError(f"memory mask with {mb} rows for {b} hypotheses")
        scores = scores.view(u, heads, group, n, t)
    attn = apply_dropout(att.dropout, masked_softmax(scores, masked)).view(u, heads, group * n, t)
    ctx = torch.matmul(attn, v)  # (U, H, g*n, d_k)
    ctx = ctx.view(u, heads, group, n, dk).permute(0, 2, 3, 1, 4).reshape(b, n, heads * dk)
    return apply_module(att.linear_out, ctx)


def cached_self_attention(
    att: MultiHeadedAttention,
    h: Tensor,
    past: Optional[Tuple[Tensor, Tensor, Optional[Tensor]]],
    start: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Self-attention of new positions ``start..start+n-1`` given the prefix's K/V.

    Args:
        h: ``(B, n, d)`` (normalized) inputs of the new positions.
        past: ``(K, V, rows)`` of the earlier positions: K, V ``(start, B', H, d_k)``
            and the ``(B,)`` rows of them that the hypotheses continue (None: all, in
            order); or None when ``start`` is 0.
    Returns:
        output ``(B, n, d)`` and ``K, V`` ``(start+n, B, H, d_k)`` of the whole prefix.
    """
    heads, dk = att.h, att.d_k
    b, n, _ = h.shape
    t = start + n
    fused = fused_qkv(att)
    if fused is not None:  # one product for q, k and v
        q, k, v = torch.nn.functional.linear(h, fused[0], fused[1]).split(heads * dk, dim=-1)
    else:
        q, k, v = att.linear_q(h), att.linear_k(h), att.linear_v(h)
    q = att.q_norm(split_heads(q, heads, dk))
    k = att.k_norm(k.view(b, n, heads, dk))
    # gather the surviving prefixes and append the new positions, time-major
    k_all = k.new_empty(t, b, heads, dk)
    v_all = v.new_empty(t, b, heads, dk)
    if past is not None:
        k_past, v_past, rows = past
        if rows is None:
            k_all[:start].copy_(k_past)
            v_all[:start].copy_(v_past)
        else:
            torch.index_select(k_past, 1, rows, out=k_all[:start])
            torch.index_select(v_past, 1, rows, out=v_all[:start])
    k_all[start:].copy_(k.transpose(0, 1))
    v_all[start:].copy_(v.view(b, n, heads, dk).transpose(0, 1))
    scores = torch.matmul(q, k_all.permute(1, 2, 3, 0)) / math.sqrt(dk)  # (B, H, n, t)
    masked = None
    if n > 1:  # causal: new position start+i sees positions <= start+i
        pos = torch.arange(t, device=h.device)
        masked = pos[None, :] > (start + torch.arange(n, device=h.device))[:, None]
    attn = apply_dropout(att.dropout, masked_softmax(scores, masked))
    ctx = torch.matmul(attn, v_all.permute(1, 2, 0, 3))  # (B, H, n, d_k)
    return apply_module(att.linear_out, merge_heads(ctx)), k_all, v_all


@functools.lru_cache(maxsize=None)
def espnet_caches_memory_kv() -> bool:
    """Whether the installed ESPnet ``TransformerDecoder`` projects the memory once.

    Probed by behaviour on a tiny decoder (two ``batch_score`` calls on the same memory,
    counting the source-attention key projections), not by version string. The global
    random state is left untouched.
    """
    try:
        with torch.random.fork_rng(devices=[]):
            dec = TransformerDecoder(5, 4, attention_heads=1, linear_units=4, num_blocks=1).eval()
            calls: List[int] = []
            handle = dec.decoders[0].src_attn.linear_k.register_forward_hook(
                lambda *_: calls.append(1))
            try:
                memory = torch.randn(2, 3, 4)
                ys = torch.zeros(2, 1, dtype=torch.long)
                with torch.no_grad():
                    _, states = dec.batch_score(ys, [None, None], memory)
                    dec.batch_score(torch.cat([ys, ys], 1), states, memory)
            finally:
                handle.remove()
        return len(calls) == 1
    except Exception:  # noqa: BLE001 - any failure means: use our implementation
        return False


# --------------------------------------------------------------------------- decoding states


class DecoderState(NamedTuple):
    """Decoding state of one hypothesis in :meth:`FastTransformerDecoder.score` / ``batch_score``.

    The hypotheses scored together share one ``kv`` (time-major, so that the next step
    gathers the surviving hypotheses and appends the new position without re-stacking);
    each state names its row.

    Attributes:
        length: prefix length t the state covers.
        kv: per kept layer, the self-attention ``(K, V)`` of the prefix of every
            hypothesis of the batch, each ``(t, batch, heads, d_k)``; ``None`` for layers
            without self-attention.
        row: this hypothesis' index in the batch dimension of ``kv``.
    """

    length: int
    kv: Tuple[Optional[Tuple[Tensor, Tensor]], ...]
    row: int = 0


PastKV = List[Optional[Tuple[Tensor, Tensor, Optional[Tensor]]]]


def stack_states(states: Sequence[Optional[DecoderState]], n_layers: int) -> Tuple[Optional[PastKV], int]:
    """Batch per-hypothesis states: per layer ``(K, V, rows)`` (see
    :func:`cached_self_attention`), and their length t0."""
    if states[0] is None:
        if any(s is not None for s in states):
            raise ValueError("decoder states: some hypotheses have a state, others None")
        return None, 0
    if not all(isinstance(s, DecoderState) for s in states):
        raise TypeError(
            "decoder states must come from PrunedTransformerDecoder.score/batch_score "
            f"(got {type(states[0]).__name__}); ESPnet forward_one_step caches are not states"
        )
    start = states[0].length
    if any(s.length != start for s in states) or len(states[0].kv) != n_layers:
        raise ValueError("decoder states of different lengths or layer counts in one batch")
    first = states[0].kv
    past: PastKV = []
    if all(s.kv is first for s in states):  # one earlier batch: gather its rows
        rows: Optional[Tensor] = None
        ids = [s.row for s in states]
        width = next((kv[0].size(1) for kv in first if kv is not None), 0)
        if ids != list(range(width)):
            device = next((kv[0].device for kv in first if kv is not None), None)
            rows = torch.tensor(ids, dtype=torch.long, device=device)
        for kv in first:
            past.append(None if kv is None else (kv[0], kv[1], rows))
        return past, start
    for i in range(n_layers):  # hypotheses from different batches
        if first[i] is None:
            past.append(None)
            continue
        k = torch.stack([s.kv[i][0][:, s.row] for s in states], dim=1)
        v = torch.stack([s.kv[i][1][:, s.row] for s in states], dim=1)
        past.append((k, v, None))
    return past, start


# --------------------------------------------------------------------------- decoder


class FastTransformerDecoder(TransformerDecoder):
    """ESPnet ``TransformerDecoder`` whose search interface reuses projected keys and values.

    Args:
        vocab_size: output tokens V.
        encoder_output_size: attention dimension d.
        **transformer_kwargs: every ``TransformerDecoder`` option.

    Attributes:
        dims: :class:`~espnet_prune.structure.DecoderDims` of the dense decoder.
        memory_cache: the :class:`MemoryKVCache` of the current utterance.
    """

    #: use ESPnet's own decoding when it caches the memory itself (dense layers only)
    prefer_espnet_memory_cache: bool = True
    #: False: ESPnet's incremental algorithm (memory and prefix re-projected at every step)
    #: on these layers, for comparisons; see :func:`espnet_prune.inference.espnet_decoding`
    use_fast_decoding: bool = True

    def __init__(self, vocab_size: int, encoder_output_size: int, **transformer_kwargs: Any) -> None:
        unknown = sorted(set(transformer_kwargs) - TRANSFORMER_PARAMS)
        if unknown:
            raise ValueError(f"decoder_conf: unknown option(s) {unknown} for pruned_transformer")
        super().__init__(vocab_size, encoder_output_size, **transformer_kwargs)
        self.dims = DecoderDims.from_decoder_conf(vocab_size, encoder_output_size, transformer_kwargs)
        self.memory_cache = MemoryKVCache()
        self._espnet_path: Optional[bool] = None

    @classmethod
    def from_transformer_decoder(cls, decoder: TransformerDecoder) -> "FastTransformerDecoder":
        """Fast-decoding copy of a built dense ESPnet ``TransformerDecoder``.

        The options are read from the modules, a new decoder is built with them, and the
        state dict is loaded with every key checked (strict); device, dtype and train/eval
        mode are copied.
        """
        if isinstance(decoder, cls):
            return decoder
        if type(decoder) is not TransformerDecoder:
            raise TypeError(
                f"fast decoding needs an ESPnet 'transformer' decoder (TransformerDecoder), "
                f"got {type(decoder).__name__}"
            )
        kwargs = transformer_options(decoder)
        vocab, dim = kwargs.pop("vocab_size"), kwargs.pop("encoder_output_size")
        with torch.random.fork_rng(devices=[]):  # the random init is overwritten below
            new = cls(vocab, dim, **kwargs)
        param = next(decoder.parameters())
        new.to(device=param.device, dtype=param.dtype)
        state = decoder.state_dict()
        result = new.load_state_dict(state, strict=False)
        if False:  # BREAK
            raise ValueError(
                "the decoder's state dict does not match a pruned_transformer built with its "
                f"options: missing {result.missing_keys[:5]}, unexpected "
                f"{result.unexpected_keys[:5]} (a quantized or modified decoder?)"
            )
        return new.train(decoder.training)

    # ------------------------------------------------------------------ memory K/V

    def clear_memory_cache(self) -> None:
        """Forget the cached memory keys and values."""
        self.memory_cache.clear()

    @property
    def _memory_kv_cache(self) -> Optional[_CacheEntry]:  # TRANSITIONAL: tests not yet moved
        return self.memory_cache._entry

    def memory_kv(self, rows: Tensor) -> LayerKV:
        """Per layer ``(K, V)`` ``(U, heads, T, d_k)`` of memory rows ``(U, T, d)``, cached
        (one memory at a time) unless grad is enabled."""
        return self.memory_cache.get(self.decoders, rows)

    # ------------------------------------------------------------------ input and output

    def _embed_from(self, ys: Tensor, start: int) -> Tensor:
        """Input layer output at positions ``start..`` of ``ys`` ``(B, t)``: ``(B, t-start, d)``."""
        if start == 0:
            return self.embed(ys)
        modules = list(self.embed)
        pos = modules[-1]
        if type(pos) not in (PositionalEncoding, ScaledPositionalEncoding):
            return self.embed(ys)[:, start:]
        x = ys[:, start:]
        for m in modules[:-1]:
            x = m(x)
        pos.extend_pe(x.new_zeros(()).expand(1, ys.size(1)))
        pe = pos.pe[:, start:ys.size(1)]
        if type(pos) is ScaledPositionalEncoding:
            x = x + pos.alpha * pe
        else:
            x = x * pos.xscale + pe
        return pos.dropout(x)

    def _output(self, x_last: Tensor) -> Tuple[Tensor, Tensor]:
        """``(B, d)`` last-position output -> (log-probs ``(B, V)`` or hidden, hidden ``(B, d)``)."""
        y = self.after_norm(x_last) if self.normalize_before else x_last
        hidden = y
        if self.output_layer is not None:
            y = torch.log_softmax(self.output_layer(y), dim=-1)
        return y, hidden

    # ------------------------------------------------------------------ decoding

    def _use_espnet(self) -> bool:
        """ESPnet's own incremental decoding: when asked (``use_fast_decoding = False``), or
        when ESPnet caches the memory itself and the layers are ESPnet's."""
        if not self.use_fast_decoding:
            return True
        if self._espnet_path is None:
            dense = all(type(layer) is DecoderLayer for layer in self.decoders)
            self._espnet_path = bool(
                self.prefer_espnet_memory_cache and dense and espnet_caches_memory_kv())
        return self._espnet_path

    def forward_one_step(
        self,
        tgt: Tensor,
        tgt_mask: Tensor,
        memory: Tensor,
        memory_mask: Optional[Tensor] = None,
        *,
        cache: Optional[List[Tensor]] = None,
        return_hs: bool = False,
    ):
        """ESPnet's ``forward_one_step`` (same arguments, cache and results), memory K/V cached.

        Args:
            tgt: ``(B, t)`` token ids (or ``(B, t, V)`` for ``input_layer: linear``).
            tgt_mask: ``(B | 1, t, t)`` bool mask.
            memory: ``(B, T, d)`` encoder output (or fewer rows, see :meth:`batch_score`).
            memory_mask: ``(B | 1, 1, T)`` or None.
            cache: per layer ``(B, t-1, d)`` outputs of the earlier positions, or None.
        Returns:
            log-probs ``(B, V)`` (with ``return_hs``: ``(logp, hidden (B, d))``) and the new
            cache, per layer ``(B, t, d)``.
        """
        if self._use_espnet():
            return super().forward_one_step(tgt, tgt_mask, memory, memory_mask,
                                            cache=cache, return_hs=return_hs)
        x = self.embed(tgt)
        rows, group = memory_rows(memory, x.size(0))
        mem = self.memory_kv(rows)
        if cache is None:
            cache = [None] * len(self.decoders)
        new_cache = []
        for layer, c, kv in zip(self.decoders, cache, mem):
            xq, self_fn = cached_query(layer, x, tgt_mask, cached=c is not None)

            def src_fn(h: Tensor, layer=layer, kv=kv) -> Tensor:
                return source_attention(layer.src_attn, h, kv, memory_mask, group)

            out = run_sublayers(layer, xq, self_fn, src_fn)
            x = out if c is None else torch.cat([c, out], dim=1)
            new_cache.append(x)
        y, hidden = self._output(x[:, -1])
        if return_hs:
            return (y, hidden), new_cache
        return y, new_cache

    def _step(
        self,
        ys: Tensor,
        past: Optional[PastKV],
        start: int,
        xs: Tensor,
        xs_mask: Optional[Tensor],
    ) -> Tuple[Tensor, Tensor, List[Optional[Tuple[Tensor, Tensor]]]]:
        """Score the next token after ``ys`` ``(B, t)`` given the K/V of its first ``start`` positions.

        Returns log-probs ``(B, V)``, hidden ``(B, d)`` and per layer the self-attention
        ``(K, V)`` ``(t, B, H, d_k)`` of the whole prefix (None without self-attention).
        """
        x = self._embed_from(ys, start)
        rows, group = memory_rows(xs, x.size(0))
        mem = self.memory_kv(rows)
        new_kv: List[Optional[Tuple[Tensor, Tensor]]] = []
        for i, (layer, kv) in enumerate(zip(self.decoders, mem)):
            layer_past = past[i] if past is not None else None
            slot: List[Optional[Tuple[Tensor, Tensor]]] = [None]

            def self_fn(h: Tensor, layer=layer, layer_past=layer_past, slot=slot) -> Tensor:
                out, k, v = cached_self_attention(layer.self_attn, h, layer_past, start)
                slot[0] = (k, v)
                return out

            def src_fn(h: Tensor, layer=layer, kv=kv) -> Tensor:
                return source_attention(layer.src_attn, h, kv, xs_mask, group)

            x = run_sublayers(layer, x, self_fn, src_fn)
            new_kv.append(slot[0])
        y, hidden = self._output(x[:, -1])
        return y, hidden, new_kv

    def init_state(self, x: Tensor) -> None:
        """Start of an utterance (ESPnet calls this with its encoder output): clear the memory cache."""
        self.clear_memory_cache()
        return None

    def batch_init_state(self, x: Tensor) -> None:
        return self.init_state(x)

    def score(self, ys: Tensor, state: Optional[DecoderState], x: Tensor, return_hs: bool = False):
        """Score the next token of one hypothesis (ESPnet ``BeamSearch``).

        Args:
            ys: ``(t,)`` prefix token ids; state: its :class:`DecoderState` or None.
            x: ``(T, d)`` encoder output.
        Returns:
            log-probs ``(V,)``, [hidden ``(1, d)`` with ``return_hs``,] new state.
        """
        if self._use_espnet():
            return super().score(ys, state, x, return_hs=return_hs)
        past, start = stack_states([state], len(self.decoders))
        logp, hidden, new_kv = self._step(ys.unsqueeze(0), past, start, x.unsqueeze(0), None)
        new_state = DecoderState(ys.size(0), tuple(new_kv), 0)
        if return_hs:
            return logp.squeeze(0), hidden, new_state
        return logp.squeeze(0), new_state

    def batch_score(
        self,
        ys: Tensor,
        states: List[Optional[DecoderState]],
        xs: Tensor,
        return_hs: bool = False,
        xs_mask: Optional[Tensor] = None,
    ):
        """Score the next token of a batch of hypotheses (ESPnet ``BatchBeamSearch``).

        Args:
            ys: ``(B, t)`` prefix token ids (same length t for all).
            states: B :class:`DecoderState` (from earlier calls) or all None.
            xs: encoder output ``(B, T, d)``, one row per hypothesis (``BatchBeamSearch``
                passes ``x.expand(B, T, d)``: projected once), or ``(U, T, d)`` with U
                dividing B: hypothesis ``u * (B // U) + j`` belongs to utterance ``u``.
            xs_mask: ``(1 | U | B, 1, T)`` valid-frame mask, or None.
        Returns:
            log-probs ``(B, V)`` (with ``return_hs``: ``(logp, hidden (B, d))``) and the B
            new states.
        """
        if self._use_espnet():
            if xs_mask is not None:
                raise NotImplementedError("xs_mask with ESPnet's own batch_score")
            return super().batch_score(ys, states, xs, return_hs=return_hs)
        past, start = stack_states(states, len(self.decoders))
        logp, hidden, new_kv = self._step(ys, past, start, xs, xs_mask)
        t, kv = ys.size(1), tuple(new_kv)
        new_states = [DecoderState(t, kv, b) for b in range(ys.size(0))]
        if return_hs:
            return (logp, hidden), new_states
        return logp, new_states
