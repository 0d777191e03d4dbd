"""Hard-concrete channel gates on ESPnet's ``Conv2dSubsampling*`` front ends.

ESPnet's conv front ends (``input_layer`` ``conv2d``, ``conv2d1``, ``conv2d2``,
``conv2d6``, ``conv2d8``) are ``conv = Sequential(Conv2d, ReLU, Conv2d, ReLU[,
Conv2d, ReLU])`` on a ``(B, 1, T, F)`` input, then the channels and the
remaining frequencies are flattened (Linear input index ``channel * F' + freq``)
into ``out = Linear(odim * F', odim)`` and the positional encoding. Every Conv2d
has ``odim`` output channels.

This module gives each Conv2d one :class:`~espnet_prune.gates.HardConcreteGate`
over its output channels and provides, for that gated front end:

* :class:`GatedConv2dSubsampling` (built by :meth:`GatedConv2dSubsampling.from_espnet`):
  ESPnet's module with its parameters and state_dict keys unchanged plus
  ``gates.<i>.log_alpha``; the gate of conv ``i`` multiplies its output after
  the ReLU (``ReLU(z x) = z ReLU(x)`` for ``z >= 0``). Train mode samples the
  gates; eval mode keeps the channels listed in :attr:`~GatedConv2dSubsampling.eval_keep`
  at their open medians. The instance *is* an instance of the ESPnet class it
  was built from (a subclass of it), so ESPnet's ``ConformerEncoder.forward``
  (``isinstance`` dispatch, ``check_short_utt``) treats it as the dense module.
* :func:`subsampling_cost`: exact params / MACs / output frames of any channel
  counts, and the differentiable expected cost when the counts are tensors.
* :meth:`GatedConv2dSubsampling.unit_groups`: the front end's part of the
  exact-target rule (:mod:`espnet_prune.budget`), and
  :meth:`~GatedConv2dSubsampling.keep_from_selection` to read the rule's result.
* :meth:`GatedConv2dSubsampling.shrink`, :func:`pruned_subsampling` and
  :func:`resize_subsampling`: a physically smaller module of ESPnet's own class
  (same state_dict keys), with the kept gate values folded into the next layer's
  input weights, rebuilt from a list ``subsampling_channels: [c1, c2, ...]``.

**Every Conv2d keeps at least one channel.** torch cannot run a Conv2d with 0
output channels, and a front end with no channel left in a conv would feed a
constant to the encoder, so :func:`pruned_subsampling` rejects a count of 0 with
an error naming ``subsampling_channels``. The exact-target rule guarantees it:
each conv's highest-scoring channel is mandatory (its cost is in the constant of
:meth:`~GatedConv2dSubsampling.unit_groups`) and only the other channels are
units. The expected cost counts the mandatory channels the same way (``1 + sum
P(z > 0)`` over the other channels of each conv), so it equals the exact cost of
the eval structure whenever the gates are saturated at 0 / 1.
"""

from __future__ import annotations

import copy
from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from espnet.nets.pytorch_backend.transformer.embedding import ScaledPositionalEncoding
from espnet.nets.pytorch_backend.transformer.subsampling import (
    Conv2dSubsampling,
    Conv2dSubsampling1,
    Conv2dSubsampling2,
    Conv2dSubsampling6,
    Conv2dSubsampling8,
)

from espnet_prune.budget import UnitGroup, select_units
from espnet_prune.cost.subsampling import (
    check_counts,
    conv_output_sizes,
    subsampling_cost,
    subsampling_unit_costs,
    subsampling_convs_of,
)
from espnet_prune.gates import GateConfig, HardConcreteGate, samples

Tensor = torch.Tensor
Number = Union[int, float, Tensor]

#: ESPnet class of each conv ``input_layer``.
SUBSAMPLING_CLASSES: Dict[str, type] = {
    "conv2d": Conv2dSubsampling,
    "conv2d1": Conv2dSubsampling1,
    "conv2d2": Conv2dSubsampling2,
    "conv2d6": Conv2dSubsampling6,
    "conv2d8": Conv2dSubsampling8,
}

# ----------------------------------------------------------------------------
# The gated module
# ----------------------------------------------------------------------------


class ChannelGatedReLU(torch.nn.ReLU):
    """``ReLU`` whose output ``(B, C, T, F)`` is multiplied by ``channel_mask`` ``(C,)``.

    No parameters, so it replaces ESPnet's ReLU without changing any key.
    """

    channel_mask: Optional[Tensor] = None

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        if self.channel_mask is None:
            return y
        return y * self.channel_mask.to(y.dtype)[None, :, None, None]


class GatedConv2dSubsampling(torch.nn.Module):
    """Common part of the gated front ends; build one with :meth:`from_espnet`.

    An instance is of a class derived from both this one and the ESPnet class
    it was built from (:data:`GATED_CLASSES`): ESPnet's own ``forward``
    (``forward(x, x_mask[, prefix_embeds]) -> (x or (x, pos_emb), mask)``) and
    ``__getitem__`` (where ESPnet has it) run unchanged, with the gates applied
    by the :class:`ChannelGatedReLU` after each Conv2d.

    Attributes:
        input_layer: ESPnet ``input_layer`` name (``conv2d``, ``conv2d6``...).
        idim: input feature dimension F.
        odim: model dimension d (dense output channels of every Conv2d).
        gates: one :class:`HardConcreteGate` per Conv2d, over its output channels.
        eval_keep: eval-mode decision, set by the encoder from the exact-target
            rule: per Conv2d, the kept output channel indices (1-D LongTensor,
            at least one). Kept channels are at their gate's open median, the
            others 0. Required in eval mode.
    """

    input_layer: str
    idim: int
    odim: int
    eval_keep: Optional[List[Tensor]] = None
    #: train mode with the eval-mode masks of the selection (:func:`~espnet_prune.gates.samples`)
    fixed_structure = False

    def __init__(self, *args, **kwargs) -> None:
        raise TypeError(
            "build a gated front end with GatedConv2dSubsampling.from_espnet(embed, gate_config, idim)"
        )

    @classmethod
    def from_espnet(
        cls, embed: torch.nn.Module, gate_config: Optional[GateConfig], idim: int
    ) -> "GatedConv2dSubsampling":
        """Take over ESPnet's ``Conv2dSubsampling*`` module ``embed`` (its modules
        and parameters, shared) and add one gate per Conv2d.

        Args:
            embed: an instance of one of :data:`SUBSAMPLING_CLASSES` (exact type).
            gate_config: the gates' hyper-parameters (``None``: defaults).
            idim: the input feature dimension ``embed`` was built for (the
                Linear's size does not determine it).
        """
        kind = _input_layer_of(embed)
        gated_cls = GATED_CLASSES[kind]
        new = gated_cls.__new__(gated_cls)
        torch.nn.Module.__init__(new)
        for name, value in vars(embed).items():
            if not name.startswith("_") and name != "training":
                setattr(new, name, value)
        for name, child in embed.named_children():
            setattr(new, name, child)
        new.conv = torch.nn.Sequential(
            *[ChannelGatedReLU() if isinstance(m, torch.nn.ReLU) else m for m in embed.conv]
        )
        new.input_layer, new.idim = kind, int(idim)
        new.odim = subsampling_out_linear(new).out_features
        _check_layout(new, "embed")
        ref = new.convs[0].weight
        config = gate_config if gate_config is not None else GateConfig()
        new.gates = torch.nn.ModuleList(
            [HardConcreteGate(conv.out_channels, config) for conv in new.convs]
        ).to(device=ref.device, dtype=ref.dtype)
        new.eval_keep = None
        new.train(embed.training)
        return new

    # -- structure -----------------------------------------------------------

    @property
    def convs(self) -> List[torch.nn.Conv2d]:
        """The Conv2d layers, in order."""
        return subsampling_convs(self)

    @property
    def out_linear(self) -> torch.nn.Linear:
        """The output projection ``Linear(odim * F', odim)``."""
        return subsampling_out_linear(self)

    @property
    def pos_enc_module(self) -> torch.nn.Module:
        """The positional encoding applied after :attr:`out_linear`."""
        return _pos_enc(self)

    @property
    def scaled_pos_enc(self) -> bool:
        """Whether the positional encoding holds the learnable scale ``alpha``."""
        return isinstance(self.pos_enc_module, ScaledPositionalEncoding)

    def gate_parameters(self) -> List[torch.nn.Parameter]:
        """All ``log_alpha`` parameters (for their own optimizer)."""
        return [g.log_alpha for g in self.gates]

    # -- forward ---------------------------------------------------------------

    def channel_masks(self) -> List[Tensor]:
        """Mask of each Conv2d's output channels, shape ``(odim,)`` each: sampled in
        train mode, from :attr:`eval_keep` in eval mode (or with a fixed structure)."""
        if samples(self):
            return [g.sample() for g in self.gates]
        if self.eval_keep is None:
            raise RuntimeError(
                "GatedConv2dSubsampling in eval mode needs eval_keep (the kept output "
                "channels of each Conv2d, from the exact-target rule): its encoder sets "
                "it, or set it from keep_from_selection() / select_keep()"
            )
        keep = check_keep(self, self.eval_keep, "eval_keep")
        return [gate(idx) for gate, idx in zip(self.gates, keep)]

    def forward(self, x: Tensor, x_mask: Optional[Tensor], *args, **kwargs):
        """ESPnet's ``forward`` of the wrapped class with the channel gates applied.

        Args:
            x: ``(B, T, idim)`` features.
            x_mask: ``(B, 1, T)`` boolean mask of valid frames, or ``None``.
        Returns:
            ``(B, T', odim)`` (or ``((B, T', odim), pos_emb)`` for relative
            positional encodings) and the ``(B, 1, T')`` mask.
        """
        relus = [m for m in self.conv if isinstance(m, ChannelGatedReLU)]
        for relu, mask in zip(relus, self.channel_masks()):
            relu.channel_mask = mask
        try:
            return super().forward(x, x_mask, *args, **kwargs)
        finally:
            for relu in relus:
                relu.channel_mask = None

    # -- costs and the exact-target rule ---------------------------------------

    def expected_channels(self) -> List[Tensor]:
        """Differentiable expected kept channels of each Conv2d: the mandatory
        channel (:meth:`mandatory_channels`) plus ``P(z > 0)`` of each other one."""
        out = []
        for gate, optional in zip(self.gates, self._optional_channels()):
            p = gate.keep_prob()
            out.append(1.0 + p[optional.to(p.device)].sum())
        return out

    def expected_cost(self, t_in: int) -> Dict[str, Tensor]:
        """Differentiable expected ``{"params", "macs"}`` at ``t_in`` input frames
        (equal to ``budget.expected_cost(groups) + constant`` of :meth:`unit_groups`)."""
        params, macs, _ = subsampling_cost(
            self.input_layer, self.idim, self.odim, self.expected_channels(), t_in,
            self.scaled_pos_enc,
        )
        return {"params": params, "macs": macs}

    def cost(self, channels: Sequence[int], t_in: int) -> Tuple[int, int, int]:
        """Exact (params, MACs, output frames) of this front end keeping ``channels``."""
        return subsampling_cost(
            self.input_layer, self.idim, self.odim, channels, t_in, self.scaled_pos_enc
        )

    def mandatory_channels(self) -> List[int]:
        """Per Conv2d, the channel that every selection keeps: the highest
        ``P(z > 0)`` (lowest index on ties)."""
        return [int(torch.argmax(g.keep_prob().detach())) for g in self.gates]

    def _optional_channels(self) -> List[Tensor]:
        out = []
        for gate, m in zip(self.gates, self.mandatory_channels()):
            idx = torch.arange(gate.n)
            out.append(idx[idx != m])
        return out

    def unit_groups(
        self, metric: str, t_in: int, key_prefix: Hashable = "frontend"
    ) -> Tuple[List[UnitGroup], float]:
        """The front end's part of the exact-target rule, in ``metric`` (``params``, or
        ``macs`` at ``t_in`` input frames).

        One :class:`~espnet_prune.budget.UnitGroup` per Conv2d, key
        ``(key_prefix, i)``; its units are the conv's output channels except the
        mandatory one (:meth:`mandatory_channels`), in increasing channel order,
        scored by their differentiable ``P(z > 0)``; unit, pair and constant costs from
        :func:`~espnet_prune.cost.subsampling.subsampling_unit_costs`.
        ``kept_cost(groups, kept) + constant`` equals :func:`subsampling_cost`
        of ``keep_from_selection(kept)`` exactly.
        """
        unit_costs, pair, constant = subsampling_unit_costs(
            self.input_layer, self.idim, self.odim, t_in, metric, self.scaled_pos_enc
        )
        n = len(self.gates)
        optional = self._optional_channels()
        groups = []
        for i, gate in enumerate(self.gates):
            pairs = {}
            if i > 0:
                pairs[(key_prefix, i - 1)] = pair[i]
            if i + 1 < n:
                pairs[(key_prefix, i + 1)] = pair[i + 1]
            scores = gate.keep_prob()[optional[i].to(gate.log_alpha.device)]
            groups.append(UnitGroup((key_prefix, i), scores, unit_costs[i], 0.0, pairs))
        return groups, constant

    def keep_from_selection(
        self, kept: Mapping[Hashable, Tensor], key_prefix: Hashable = "frontend"
    ) -> List[Tensor]:
        """Kept channel indices per Conv2d (sorted LongTensors, the mandatory channel
        included) from :func:`~espnet_prune.budget.select_units`' result over
        :meth:`unit_groups` (other keys are ignored); the value for :attr:`eval_keep`
        and :meth:`shrink`. Call it with the gates unchanged since :meth:`unit_groups`."""
        out = []
        for i, (m, optional) in enumerate(zip(self.mandatory_channels(), self._optional_channels())):
            units = kept[(key_prefix, i)].cpu().long()
            idx = torch.cat([torch.tensor([m]), optional[units]])
            out.append(torch.sort(idx).values)
        return out

    @torch.no_grad()
    def select_keep(self, metric: str, t_in: int, budget: float) -> List[Tensor]:
        """Front end on its own: the exact-target rule at ``budget`` (``metric`` at
        ``t_in`` frames, the whole front end's cost) -> kept channels per conv."""
        groups, constant = self.unit_groups(metric, t_in)
        kept = select_units(groups, max(float(budget) - constant, 0.0))
        return self.keep_from_selection(kept)

    # -- shrinking ----------------------------------------------------------------

    @torch.no_grad()
    def shrink(self, keep: Optional[Sequence[Tensor]] = None) -> Tuple[torch.nn.Module, List[int]]:
        """A physically smaller front end computing what this one computes in eval
        mode with ``keep`` (default :attr:`eval_keep`) kept channels.

        Returns ``(module, channels)``: ``module`` is an instance of the ESPnet
        class (as :func:`pruned_subsampling` builds it from ``channels``), with the
        kept channels' weights; each kept gate's open median is folded into the
        next layer's input weights (the next conv's input channels, or the output
        Linear's ``channel * F'`` column block). The positional encoding is copied.
        """
        keep = check_keep(self, self.eval_keep if keep is None else list(keep), "keep")
        scales = [g.kept_values(k) for g, k in zip(self.gates, keep)]
        channels = [int(k.numel()) for k in keep]
        ref = self.convs[0].weight
        pruned = pruned_subsampling(
            self.input_layer, self.idim, self.odim, 0.0,
            copy.deepcopy(self.pos_enc_module), channels,
        ).to(device=ref.device, dtype=ref.dtype)
        pruned.train(self.training)
        prev_keep, prev_scale = None, None
        for conv, new, idx, scale in zip(self.convs, subsampling_convs(pruned), keep, scales):
            idx = idx.to(conv.weight.device)
            w = conv.weight[idx]
            if prev_keep is not None:
                w = w[:, prev_keep] * prev_scale.to(w)[None, :, None, None]
            new.weight.copy_(w)
            new.bias.copy_(conv.bias[idx])
            prev_keep, prev_scale = idx, scale
        out, new_out = self.out_linear, subsampling_out_linear(pruned)
        c_last = self.convs[-1].out_channels
        w = out.weight.view(self.odim, c_last, -1)[:, prev_keep] * prev_scale.to(out.weight)[None, :, None]
        new_out.weight.copy_(w.reshape(self.odim, -1))
        new_out.bias.copy_(out.bias)
        return pruned, channels


class GatedConv2dSubsampling4(GatedConv2dSubsampling, Conv2dSubsampling):
    """Gated ``conv2d`` (ESPnet ``Conv2dSubsampling``, 1/4 length)."""


class GatedConv2dSubsampling1(GatedConv2dSubsampling, Conv2dSubsampling1):
    """Gated ``conv2d1`` (ESPnet ``Conv2dSubsampling1``, no subsampling)."""


class GatedConv2dSubsampling2(GatedConv2dSubsampling, Conv2dSubsampling2):
    """Gated ``conv2d2`` (ESPnet ``Conv2dSubsampling2``, 1/2 length)."""


class GatedConv2dSubsampling6(GatedConv2dSubsampling, Conv2dSubsampling6):
    """Gated ``conv2d6`` (ESPnet ``Conv2dSubsampling6``, 1/6 length)."""


class GatedConv2dSubsampling8(GatedConv2dSubsampling, Conv2dSubsampling8):
    """Gated ``conv2d8`` (ESPnet ``Conv2dSubsampling8``, 1/8 length)."""


#: Gated class of each ``input_layer``.
GATED_CLASSES: Dict[str, type] = {
    "conv2d": GatedConv2dSubsampling4,
    "conv2d1": GatedConv2dSubsampling1,
    "conv2d2": GatedConv2dSubsampling2,
    "conv2d6": GatedConv2dSubsampling6,
    "conv2d8": GatedConv2dSubsampling8,
}


# ----------------------------------------------------------------------------
# The pruned module: ESPnet's class with fewer channels
# ----------------------------------------------------------------------------


def check_channels(
    input_layer: str, odim: int, channels: Sequence[int], name: str = "subsampling_channels"
) -> List[int]:
    """Validate kept-channel counts: one per Conv2d, each in ``[1, odim]``."""
    check_counts(input_layer, channels, name)
    out = []
    for i, c in enumerate(channels):
        if isinstance(c, bool) or int(c) != c or not 1 <= int(c) <= odim:
            raise ValueError(
                f"{name}[{i}]={c!r}: every Conv2d of the {input_layer!r} front end keeps "
                f"between 1 and output_size={odim} channels (a Conv2d cannot have 0)"
            )
        out.append(int(c))
    return out


def resize_subsampling(
    embed: torch.nn.Module, channels: Sequence[int], name: str = "subsampling_channels"
) -> torch.nn.Module:
    """In place: give ESPnet's ``Conv2dSubsampling*`` module ``embed`` ``channels[i]``
    output channels in Conv2d ``i`` (freshly initialised layers where a size
    changes; state_dict keys unchanged). Returns ``embed``."""
    kind = _input_layer_of(embed)
    out = subsampling_out_linear(embed)
    odim = out.out_features
    channels = check_channels(kind, odim, channels, name)
    convs = subsampling_convs(embed)
    f_out = out.in_features // convs[-1].out_channels
    positions = [i for i, m in enumerate(embed.conv) if isinstance(m, torch.nn.Conv2d)]
    c_in = 1
    for pos, conv, c in zip(positions, convs, channels):
        if (conv.in_channels, conv.out_channels) != (c_in, c):
            new = torch.nn.Conv2d(c_in, c, conv.kernel_size, conv.stride)
            embed.conv[pos] = new.to(device=conv.weight.device, dtype=conv.weight.dtype)
        c_in = c
    if out.in_features != c_in * f_out:
        new = torch.nn.Linear(c_in * f_out, odim).to(device=out.weight.device, dtype=out.weight.dtype)
        if isinstance(embed.out, torch.nn.Linear):
            embed.out = new
        else:
            embed.out[0] = new
    return embed


def pruned_subsampling(
    input_layer: str,
    idim: int,
    odim: int,
    dropout_rate: float,
    pos_enc: Optional[torch.nn.Module],
    channels: Sequence[int],
) -> torch.nn.Module:
    """ESPnet's front end for ``input_layer`` (its own class, forward and state_dict
    keys) with ``channels[i]`` output channels in Conv2d ``i`` (the YAML list
    ``subsampling_channels``); arguments as ESPnet's constructor."""
    cls = SUBSAMPLING_CLASSES.get(input_layer)
    if cls is None:
        raise ValueError(
            f"input_layer={input_layer!r} has no conv front end to prune; "
            f"choose from {sorted(SUBSAMPLING_CLASSES)}"
        )
    check_channels(input_layer, odim, channels)
    return resize_subsampling(cls(idim, odim, dropout_rate, pos_enc), channels)


def subsampling_channels(embed: torch.nn.Module) -> List[int]:
    """Output channels of each Conv2d of a (pruned or dense) front end."""
    return [conv.out_channels for conv in subsampling_convs(embed)]


# ----------------------------------------------------------------------------
# Helpers on ESPnet's module layout
# ----------------------------------------------------------------------------


def check_keep(embed: GatedConv2dSubsampling, keep: Sequence[Tensor], name: str) -> List[Tensor]:
    """``keep`` (kept channel indices per Conv2d of ``embed``) as LongTensors, after
    checking one non-empty set of distinct, in-range indices per Conv2d; a ValueError
    names ``name``."""
    if len(keep) != len(embed.gates):
        raise ValueError(
            f"{name} has {len(keep)} entries; the {embed.input_layer!r} front end has "
            f"{len(embed.gates)} Conv2d layers"
        )
    out = []
    for i, (idx, gate) in enumerate(zip(keep, embed.gates)):
        idx = torch.as_tensor(idx).long().reshape(-1)
        if idx.numel() == 0:
            raise ValueError(
                f"{name}[{i}] keeps no channel; every Conv2d of the front end keeps at "
                "least one (subsampling_channels >= 1)"
            )
        if int(idx.min()) < 0 or int(idx.max()) >= gate.n or idx.unique().numel() != idx.numel():
            raise ValueError(
                f"{name}[{i}] must hold distinct channel indices in [0, {gate.n}), got {idx.tolist()}"
            )
        out.append(idx)
    return out


def _input_layer_of(embed: torch.nn.Module) -> str:
    if isinstance(embed, GatedConv2dSubsampling):
        raise TypeError("the front end is already gated")
    for kind, cls in SUBSAMPLING_CLASSES.items():
        if type(embed) is cls:
            return kind
    raise TypeError(
        f"cannot gate a {type(embed).__name__} front end; supported: "
        f"{[c.__name__ for c in SUBSAMPLING_CLASSES.values()]}"
    )


def subsampling_convs(embed: torch.nn.Module) -> List[torch.nn.Conv2d]:
    return [m for m in embed.conv if isinstance(m, torch.nn.Conv2d)]


def subsampling_out_linear(embed: torch.nn.Module) -> torch.nn.Linear:
    return embed.out if isinstance(embed.out, torch.nn.Linear) else embed.out[0]


def _pos_enc(embed: torch.nn.Module) -> torch.nn.Module:
    return embed.pos_enc if isinstance(embed.out, torch.nn.Linear) else embed.out[1]


def _check_layout(embed: GatedConv2dSubsampling, name: str) -> None:
    """The ESPnet module has the layout this file assumes (Conv2d/ReLU pairs,
    kernels and strides of :data:`SUBSAMPLING_CONVS`, Linear over ``odim * F'``)."""
    layers = list(embed.conv)
    convs = subsampling_convs(embed)
    expected = subsampling_convs_of(embed.input_layer)
    pairs_ok = len(layers) == 2 * len(convs) and all(
        isinstance(a, torch.nn.Conv2d) and isinstance(b, torch.nn.ReLU)
        for a, b in zip(layers[::2], layers[1::2])
    )
    shapes_ok = [(c.kernel_size, c.stride) for c in convs] == [((k, k), (s, s)) for k, s in expected]
    f_out = conv_output_sizes(embed.input_layer, embed.idim, 0)[-1][1]
    linear_ok = subsampling_out_linear(embed).in_features == convs[-1].out_channels * f_out if convs else False
    if not (pairs_ok and shapes_ok and linear_ok):
        raise ValueError(
            f"{name}: unexpected {type(embed).__mro__[2].__name__} layout for input_layer "
            f"{embed.input_layer!r} with idim={embed.idim} (Conv2d/ReLU pairs with (kernel, "
            f"stride) {list(expected)} and an output Linear over odim * F' inputs expected)"
        )
