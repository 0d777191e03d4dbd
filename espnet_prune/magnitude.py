"""One-shot structured magnitude pruning: the ``magnitude`` same-size baseline.

Every prunable unit of a gated model (attention head, FFN hidden unit, conv
channel, front-end channel, decoder head / unit) owns a set of weights: the rows
and columns that disappear when the unit is removed. Its magnitude is the L2 norm
of those weights (biases included). Units are ranked across the whole model by
their norm *relative to the mean norm of their module* (raw norms are not
comparable between a head of ``4 * d * d_k`` weights and an FFN unit of ``2 * d``),
then the exact-target rule (:mod:`espnet_prune.budget`) keeps the best-ranked
units until the budget is met, exactly as it does with learned gates. Gates are
set fully open, so the kept weights are the teacher's, unscaled.

    model = gated model holding the teacher's weights
    selector = build_selector(model, "params", sparsity)
    magnitude_prune(model, selector)          # then shrink_asr_model(model, args)
"""

from __future__ import annotations

from typing import Dict, Hashable, Iterable, List, Tuple

import torch
from espnet.nets.pytorch_backend.conformer.convolution import ConvolutionModule
from espnet.nets.pytorch_backend.transformer.attention import MultiHeadedAttention
from espnet.nets.pytorch_backend.transformer.positionwise_feed_forward import PositionwiseFeedForward

Tensor = torch.Tensor

#: log_alpha that makes a gate's open median exactly 1 (kept weights unscaled)
OPEN_LOG_ALPHA = 20.0


def _sq(t: Tensor) -> Tensor:
    return t.detach().double() ** 2


def _rows_sq(layer: torch.nn.Module) -> Tensor:
    """Sum of squares of each output row (weight row + bias), shape ``(out,)``."""
    w = _sq(layer.weight).reshape(layer.weight.shape[0], -1).sum(1)
    return w + _sq(layer.bias) if layer.bias is not None else w


def _cols_sq(layer: torch.nn.Module) -> Tensor:
    """Sum of squares of each input column of a Linear / 1x1 Conv1d, shape ``(in,)``."""
    w = _sq(layer.weight)
    return w.transpose(0, 1).reshape(w.shape[1], -1).sum(1)


def unit_norms(module: torch.nn.Module) -> Tensor:
    """L2 norm of the weights each unit of ``module`` owns, shape ``(n_units,)``.

    * ``MultiHeadedAttention`` (one unit per head): the head's ``d_k`` rows of
      ``linear_q/k/v`` (and ``linear_pos``), their biases, its ``pos_bias_u/v`` row
      and its ``d_k`` columns of ``linear_out``;
    * ``PositionwiseFeedForward`` (hidden units): row of ``w_1`` (+ bias), column of ``w_2``;
    * ``ConvolutionModule`` (depthwise channels): rows ``c`` and ``c + C`` of
      ``pointwise_conv1`` (the GLU halves), the depthwise filter, the norm's
      affine weights and column ``c`` of ``pointwise_conv2``.

    These are exactly the parameters :func:`espnet_prune.blocks.subset_module` drops
    with the unit (``tests/test_magnitude.py`` checks it).
    """
    if isinstance(module, MultiHeadedAttention):
        h, dk = module.h, module.d_k
        rows = sum(_rows_sq(getattr(module, n)) for n in ("linear_q", "linear_k", "linear_v", "linear_pos")
                   if hasattr(module, n))
        per_head = rows.reshape(h, dk).sum(1) + _cols_sq(module.linear_out).reshape(h, dk).sum(1)
        for name in ("pos_bias_u", "pos_bias_v"):
            if hasattr(module, name):
                per_head = per_head + _sq(getattr(module, name)).reshape(h, -1).sum(1)
        return per_head.sqrt()
    if isinstance(module, PositionwiseFeedForward):
        return (_rows_sq(module.w_1) + _cols_sq(module.w_2)).sqrt()
    if isinstance(module, ConvolutionModule):
        c = module.depthwise_conv.in_channels
        pw1 = _rows_sq(module.pointwise_conv1)
        total = pw1[:c] + pw1[c:] + _rows_sq(module.depthwise_conv) + _cols_sq(module.pointwise_conv2)
        norm = module.norm
        for name in ("weight", "bias"):
            p = getattr(norm, name, None)
            if p is not None and p.shape == (c,):
                total = total + _sq(p)
        return total.sqrt()
    raise TypeError(f"no unit magnitudes for a {type(module).__name__}")


def channel_norms(convs: List[torch.nn.Module], out_linear: torch.nn.Linear) -> List[Tensor]:
    """L2 norm of each output channel of each Conv2d of a subsampling front end:
    its filter and bias, plus its input slice of the next conv (or its ``F'``
    columns of the output Linear, whose input is channel-major), ``[(c_i,)...]``."""
    out = []
    for i, conv in enumerate(convs):
        own = _rows_sq(conv)
        if i + 1 < len(convs):
            nxt = _sq(convs[i + 1].weight).transpose(0, 1).reshape(conv.out_channels, -1).sum(1)
        else:
            nxt = _sq(out_linear.weight).reshape(out_linear.out_features, conv.out_channels, -1).sum((0, 2))
        out.append((own + nxt).sqrt())
    return out


def relative(norms: Tensor) -> Tensor:
    """Norms over their module's mean (1.0 = an average unit of that module)."""
    mean = norms.mean()
    return norms / mean if mean > 0 else torch.ones_like(norms)


def _group_scores(part_name: str, part: torch.nn.Module, keys: Iterable[Hashable]) -> Dict[Tuple[str, Hashable], Tensor]:
    """Relative magnitude of the units of each of ``part``'s groups."""
    from espnet_prune.frontend import subsampling_convs, subsampling_out_linear

    keys = list(keys)
    out: Dict[Tuple[str, Hashable], Tensor] = {}
    frontend = None
    for key in keys:
        owner, name = key
        if owner == "frontend":  # encoder front end: optional channels of conv ``name``
            if frontend is None:
                embed = part.embed
                norms = channel_norms(subsampling_convs(embed), subsampling_out_linear(embed))
                frontend = [relative(n)[opt.to(n.device)] for n, opt in zip(norms, embed._optional_channels())]
            out[(part_name, key)] = frontend[name]
            continue
        layer = part.encoders[owner] if part_name == "encoder" else part.decoders[owner]
        module = layer.module(name) if part_name == "encoder" else layer.sublayer(name)
        out[(part_name, key)] = relative(unit_norms(module))
    return out


def magnitude_scores(selector) -> Dict[Tuple[str, Hashable], Tensor]:
    """Scores for :meth:`espnet_prune.targets.TargetSelector.rank_by`: relative unit
    magnitudes; a group that is one whole module (module gate only) scores 1."""
    groups, _ = selector.groups()
    by_part: Dict[str, List[Tuple[Hashable, int]]] = {}
    for g in groups:
        by_part.setdefault(g.key[0], []).append((g.key[1], g.n))
    scores: Dict[Tuple[str, Hashable], Tensor] = {}
    for part_name, entries in by_part.items():
        part = selector.parts[part_name]
        computed = _group_scores(part_name, part, [k for k, _ in entries])
        for key, n in entries:
            s = computed[(part_name, key)]
            if s.numel() != n:  # a module with only a module gate: one unit
                s = torch.ones(n, dtype=torch.float64)
            scores[(part_name, key)] = s.float()
    return scores


@torch.no_grad()
def open_gates(model: torch.nn.Module) -> None:
    """Set every gate's ``log_alpha`` so that its open median is exactly 1."""
    for name, p in model.named_parameters():
        if name.endswith("log_alpha"):
            p.fill_(OPEN_LOG_ALPHA)


def magnitude_prune(model: torch.nn.Module, selector) -> Dict[str, Dict[Hashable, Tensor]]:
    """Open every gate, rank ``selector``'s units by magnitude and attach it, so that the
    model's eval mode (and :func:`espnet_prune.shrink.shrink_asr_model`) is the
    magnitude-pruned structure at the selector's target. Returns the selection."""
    open_gates(model)
    selector.rank_by(magnitude_scores(selector)).attach()
    return selector.selection()
