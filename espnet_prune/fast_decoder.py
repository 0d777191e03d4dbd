"""Fast exact incremental decoding for ESPnet's Transformer decoder.

:class:`FastTransformerDecoder` is ESPnet's ``TransformerDecoder`` with the search
interface (``score`` / ``batch_score`` / ``forward_one_step``, used by ESPnet's
``BeamSearch`` / ``BatchBeamSearch``) re-implemented to give the same scores with less work:

* the source-attention keys and values of the encoder output (memory) are projected once
  per utterance and reused for every hypothesis and step
  (:class:`~espnet_prune.fast_attention.MemoryKVCache`); a memory
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
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import torch
from espnet.nets.pytorch_backend.transformer.decoder_layer import DecoderLayer
from espnet.nets.pytorch_backend.transformer.embedding import (
    PositionalEncoding,
    ScaledPositionalEncoding,
)
from espnet2.asr.decoder.transformer_decoder import TransformerDecoder

from espnet_prune.decoder_layer import apply_dropout, cached_query, run_sublayers
from espnet_prune.fast_attention import (
    LayerKV,
    MemoryKVCache,
    cached_self_attention,
    memory_rows,
    source_attention,
)
from espnet_prune.structure import TRANSFORMER_PARAMS, DecoderDims, transformer_options

Tensor = torch.Tensor


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
        if result.missing_keys or result.unexpected_keys:
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
        table = pos.pe
        if table is None or table.size(1) < ys.size(1) or table.dtype != x.dtype or table.device != x.device:
            pos.extend_pe(x.new_zeros(()).expand(1, ys.size(1)))  # (what ESPnet's forward does)
        pe = pos.pe[:, start:ys.size(1)]
        if type(pos) is ScaledPositionalEncoding:
            x = x + pos.alpha * pe
        else:
            x = x * pos.xscale + pe
        return apply_dropout(pos.dropout, x)

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
