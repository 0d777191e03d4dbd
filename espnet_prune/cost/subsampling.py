"""Cost of ESPnet's ``Conv2dSubsampling*`` front ends at any kept channel counts.

ESPnet's conv front ends are ``Conv2d, ReLU`` pairs on a ``(B, 1, T, F)`` input (every
Conv2d with ``odim`` output channels in the dense model), then ``Linear(c_last * F', odim)``
over the flattened channels and frequencies and the positional encoding. The (kernel,
stride) table below is the one place the project writes their shapes down.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from espnet_prune.cost.metrics import Number, check_metric

#: (kernel, stride) of each Conv2d, in order, per ``input_layer`` (time and
#: frequency alike; no padding).
SUBSAMPLING_CONVS: Dict[str, Tuple[Tuple[int, int], ...]] = {
    "conv2d": ((3, 2), (3, 2)),
    "conv2d1": ((3, 1), (3, 1)),
    "conv2d2": ((3, 2), (3, 1)),
    "conv2d6": ((3, 2), (5, 3)),
    "conv2d8": ((3, 2), (3, 2), (3, 2)),
}


def subsampling_convs_of(input_layer: str) -> Tuple[Tuple[int, int], ...]:
    convs = SUBSAMPLING_CONVS.get(input_layer)
    if convs is None:
        raise ValueError(
            f"input_layer={input_layer!r} has no gated front end; "
            f"choose from {sorted(SUBSAMPLING_CONVS)}"
        )
    return convs


def conv_output_sizes(input_layer: str, idim: int, t_in: int) -> List[Tuple[int, int]]:
    """(frames, frequencies) at the output of each Conv2d for a ``(t_in, idim)``
    input; 0 once the input is shorter than the kernel."""
    sizes, t, f = [], int(t_in), int(idim)
    for kernel, stride in subsampling_convs_of(input_layer):
        t = (t - kernel) // stride + 1 if t >= kernel else 0
        f = (f - kernel) // stride + 1 if f >= kernel else 0
        sizes.append((t, f))
    return sizes


def check_counts(input_layer: str, channels: Sequence[Number], name: str) -> None:
    n = len(subsampling_convs_of(input_layer))
    if len(channels) != n:
        raise ValueError(
            f"{name} has {len(channels)} entries, but input_layer {input_layer!r} "
            f"has {n} Conv2d layers (one kept-channel count each)"
        )


def subsampling_cost(
    input_layer: str,
    idim: int,
    odim: int,
    channels: Sequence[Number],
    t_in: int,
    scaled_pos_enc: bool = False,
) -> Tuple[Number, Number, int]:
    """(params, MACs, output frames) of a conv front end keeping ``channels[i]``
    output channels in Conv2d ``i``, at ``t_in`` input frames of ``idim`` features.

    Params are what the module's state_dict holds: every Conv2d's weight
    ``c_in * c_out * k * k`` and bias ``c_out`` (``c_in = 1`` for the first), the
    output Linear ``odim * (c_last * F') + odim``, and the positional encoding's
    learnable scale (1) when ``scaled_pos_enc``. MACs are the multiply-adds of
    the convolutions (``t_i * f_i * c_in * c_out * k * k``) and of the output
    Linear (``t_out * c_last * F' * odim``) for one utterance, biases not
    counted (= ``FlopCounterMode`` total // 2).

    With integer counts the result is exact. With tensors (expected counts
    ``sum P(z > 0)`` of independent gates) it is the differentiable expectation:
    ``E[c_i * c_j] = E[c_i] * E[c_j]``.
    """
    check_counts(input_layer, channels, "channels")
    convs = subsampling_convs_of(input_layer)
    sizes = conv_output_sizes(input_layer, idim, t_in)
    params: Number = odim + (1 if scaled_pos_enc else 0)  # out bias, pos_enc alpha
    macs: Number = 0
    c_in: Number = 1
    for (kernel, _), (t, f), c in zip(convs, sizes, channels):
        params = params + c_in * c * kernel * kernel + c
        macs = macs + t * f * c_in * c * kernel * kernel
        c_in = c
    t_out, f_out = sizes[-1]
    params = params + odim * c_in * f_out
    macs = macs + t_out * c_in * f_out * odim
    return params, macs, t_out


def subsampling_cost_terms(
    input_layer: str, idim: int, odim: int, t_in: int, metric: str, scaled_pos_enc: bool
) -> Tuple[List[float], List[float], float]:
    """:func:`subsampling_cost` in ``metric`` as ``constant + sum_i linear[i] * c_i +
    sum_i pair[i] * c_{i-1} * c_i`` of the kept channel counts ``c_i``.

    Returns ``(linear, pair, constant)``; ``pair[0]`` is 0 (conv 0's input is
    the single feature plane, whose weights are in ``linear[0]``).
    """
    check_metric(metric)
    convs = subsampling_convs_of(input_layer)
    sizes = conv_output_sizes(input_layer, idim, t_in)
    n = len(convs)
    linear, pair = [0.0] * n, [0.0] * n
    f_out = sizes[-1][1]
    if metric == "params":
        constant = float(odim + (1 if scaled_pos_enc else 0))
        for i, (kernel, _) in enumerate(convs):
            linear[i] = 1.0  # bias
            pair[i] = float(kernel * kernel) if i else 0.0
        linear[0] += convs[0][0] ** 2  # conv 0 weights, one input plane
        linear[-1] += odim * f_out  # out Linear columns of one channel
    else:
        constant = 0.0
        for i, ((kernel, _), (t, f)) in enumerate(zip(convs, sizes)):
            pair[i] = float(t * f * kernel * kernel) if i else 0.0
        t0, f0 = sizes[0]
        linear[0] += t0 * f0 * convs[0][0] ** 2
        linear[-1] += sizes[-1][0] * f_out * odim
    return linear, pair, constant


def subsampling_unit_costs(
    input_layer: str, idim: int, odim: int, t_in: int, metric: str, scaled_pos_enc: bool
) -> Tuple[List[float], List[float], float]:
    """The front end's cost in ``metric`` over the exact-target rule's units.

    Every Conv2d keeps one mandatory channel; its other kept channels are units
    (``c_i = 1 + u_i``). The cost is ``constant + sum_i unit_costs[i] * u_i + sum_i
    pair[i] * u_{i-1} * u_i``:

    * ``pair[i]`` between conv ``i - 1`` and conv ``i``: one (input, output) channel
      pair, ``k * k`` params or ``t_i * f_i * k * k`` MACs (``pair[0] = 0``);
    * ``unit_costs[i]``: a channel's bias (params), conv 0's ``k * k`` weights (and
      MACs), the last conv's ``F' * odim`` Linear columns (and MACs), plus its pairs
      with the neighbours' mandatory channels;
    * ``constant``: the Linear bias, the positional scale, and everything of the
      mandatory channels.

    Returns ``(unit_costs, pair, constant)``; a ValueError when a unit would cost 0
    (an input shorter than the subsampling needs).
    """
    linear, pair, constant = subsampling_cost_terms(input_layer, idim, odim, t_in, metric, scaled_pos_enc)
    after = pair[1:] + [0.0]  # pair with the next conv's channels
    unit_costs = [linear[i] + pair[i] + after[i] for i in range(len(linear))]
    if not all(c > 0 for c in unit_costs):
        raise ValueError(
            f"front-end {metric} cost is 0 at t_in={t_in} input frames "
            f"(shorter than {input_layer!r} subsampling needs)"
        )
    return unit_costs, pair, constant + sum(linear) + sum(pair)
