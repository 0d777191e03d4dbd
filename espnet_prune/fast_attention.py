"""Attention pieces of the fast decoder: the memory K/V cache and the cached attention kernels.

:class:`MemoryKVCache` holds the source-attention keys and values of one memory (encoder
output) for every layer, keyed on the memory's storage (held by a weak reference: the cache
never outlives the tensor, and a new tensor allocated at the same address is a different
storage), its view geometry, its in-place version counter and the projection weights.
:func:`source_attention` scores queries against such cached keys/values;
:func:`cached_self_attention` attends from new positions over a prefix whose keys/values
are carried in the decoding state. Both give ESPnet's ``MultiHeadedAttention`` results.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from espnet.nets.pytorch_backend.transformer.attention import MultiHeadedAttention
from espnet.nets.pytorch_backend.transformer.decoder_layer import DecoderLayer

from espnet_prune.decoder_layer import apply_dropout, apply_module, is_plain_linear

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
                for p in mod._parameters.values():  # (mod.parameters() costs a generator per call)
                    if p is not None:
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
