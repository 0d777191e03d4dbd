"""Gated conv subsampling front end: against ESPnet's Conv2dSubsampling* classes,
its shrunk twin, torch's parameter and FLOP counts, and the exact-target rule."""

import copy
import random
from typing import List

import pytest
import torch
from espnet.nets.pytorch_backend.transformer.embedding import (
    PositionalEncoding,
    RelPositionalEncoding,
    ScaledPositionalEncoding,
)
from espnet.nets.pytorch_backend.transformer.subsampling import TooShortUttError, check_short_utt
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
from torch.utils.flop_counter import FlopCounterMode

from conftest import TINY_CONF, valid_mask
from espnet_prune.budget import kept_cost, max_error, select_units
from espnet_prune.cost import SUBSAMPLING_CONVS, conv_output_sizes, frontend_cost, subsampling_cost
from espnet_prune.frontend import (
    GATED_CLASSES,
    SUBSAMPLING_CLASSES,
    GatedConv2dSubsampling,
    pruned_subsampling,
    resize_subsampling,
    subsampling_channels,
)
from espnet_prune.gates import GateConfig
from espnet_prune.structure import ConformerDims

IDIM, ODIM = 20, 8
KINDS = sorted(SUBSAMPLING_CLASSES)
POS_ENCS = {"abs": PositionalEncoding, "rel": RelPositionalEncoding, "scaled": ScaledPositionalEncoding}
#: Shortest input each front end accepts (ESPnet's check_short_utt limits).
SHORT_LIMITS = {"conv2d": 7, "conv2d1": 5, "conv2d2": 7, "conv2d6": 11, "conv2d8": 15}


def espnet_front(kind: str, pos: str = "abs", odim: int = ODIM, idim: int = IDIM, seed: int = 0):
    """ESPnet's module with random values in every parameter (biases included)."""
    torch.manual_seed(seed)
    module = SUBSAMPLING_CLASSES[kind](idim, odim, 0.0, POS_ENCS[pos](odim, 0.0))
    randomize(module, seed)
    return module


def randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if "log_alpha" not in name:
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)


def gate(embed, idim: int = IDIM, **conf):
    return GatedConv2dSubsampling.from_espnet(embed, GateConfig(**conf), idim)


def open_all(gated) -> None:
    for p in gated.gate_parameters():
        p.data.fill_(10.0)  # P(open) ~ 1, samples and open medians exactly 1


def random_gates(gated, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in gated.gate_parameters():
        p.data.copy_(torch.randn(p.shape, generator=g) * 3.0)


def padded_batch(seed: int = 0, t: int = 41, lengths=(41, 30, 17), idim: int = IDIM):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), t, idim, generator=g)
    lengths = torch.tensor(lengths)
    mask = (torch.arange(t)[None, :] < lengths[:, None])[:, None, :]
    return x, mask


def split(y):
    """(x, pos_emb or None) of a front end's first output."""
    return (y[0], y[1]) if isinstance(y, tuple) else (y, None)


def assert_same_output(out_a, out_b, tol: float) -> None:
    """Same masks, same positional embeddings, outputs within ``tol`` on valid frames."""
    (ya, ma), (yb, mb) = out_a, out_b
    (xa, pa), (xb, pb) = split(ya), split(yb)
    assert xa.shape == xb.shape
    if ma is None:
        assert mb is None
        lengths = torch.full((xa.size(0),), xa.size(1))
    else:
        assert torch.equal(ma, mb)
        lengths = ma[:, 0, :].sum(-1)
    assert ((xa - xb) * valid_mask(lengths, xa.size(1))).abs().max().item() <= tol
    assert (pa is None) == (pb is None)
    if pa is not None:
        assert torch.equal(pa, pb)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def random_keep(gated, rng: random.Random) -> List[torch.Tensor]:
    out = []
    for g in gated.gates:
        k = rng.choice([1, g.n, rng.randint(1, g.n)])
        out.append(torch.tensor(sorted(rng.sample(range(g.n), k))))
    return out


# ----------------------------------------------------------------------------
# Open gates == ESPnet; checkpoints
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pos", ["abs", "rel"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_open_gates_equal_espnet(kind, pos, mode):
    ref = espnet_front(kind, pos)
    gated = gate(copy.deepcopy(ref))
    assert isinstance(gated, SUBSAMPLING_CLASSES[kind]) and isinstance(gated, GATED_CLASSES[kind])
    open_all(gated)
    ref.train(mode == "train"), gated.train(mode == "train")
    gated.eval_keep = [torch.arange(ODIM)] * len(gated.gates)
    x, mask = padded_batch()
    with torch.no_grad():
        assert_same_output(gated(x, mask), ref(x, mask), 1e-5)
        assert_same_output(gated(x, None), ref(x, None), 1e-5)
        if kind == "conv2d8":  # ESPnet's only front end with prefix embeddings
            prefix = torch.randn(3, 2, ODIM)
            assert_same_output(gated(x, mask, prefix_embeds=prefix), ref(x, mask, prefix_embeds=prefix), 1e-5)
    if hasattr(ref, "__getitem__"):
        assert gated[-1] is gated.pos_enc_module


@pytest.mark.parametrize("kind", KINDS)
def test_dense_checkpoint_loads_with_every_key_matched(kind):
    ref = espnet_front(kind, "scaled", seed=1)
    gated = gate(espnet_front(kind, "scaled", seed=2))
    keys = list(gated.state_dict())
    n_convs = len(SUBSAMPLING_CONVS[kind])
    assert keys == list(ref.state_dict()) + [f"gates.{i}.log_alpha" for i in range(n_convs)]
    missing, unexpected = gated.load_state_dict(ref.state_dict(), strict=False)
    assert unexpected == [] and missing == [f"gates.{i}.log_alpha" for i in range(n_convs)]
    open_all(gated)
    x, mask = padded_batch(3)
    with torch.no_grad():
        assert_same_output(gated.train()(x, mask), ref.train()(x, mask), 1e-5)


def test_takes_over_the_espnet_modules():
    ref = espnet_front("conv2d")
    gated = gate(ref)
    assert gated.convs[1] is ref.conv[2] and gated.out_linear is ref.out[0]
    assert type(ref.conv[1]) is torch.nn.ReLU  # the ESPnet module itself is untouched
    with pytest.raises(TypeError, match="already gated"):
        gate(gated)
    with pytest.raises(TypeError, match="cannot gate a Sequential"):
        gate(torch.nn.Sequential(torch.nn.Linear(IDIM, ODIM)))
    with pytest.raises(ValueError, match="idim=30"):
        gate(espnet_front("conv2d"), idim=30)


def test_eval_mode_needs_eval_keep():
    gated = gate(espnet_front("conv2d")).eval()
    x, mask = padded_batch()
    with pytest.raises(RuntimeError, match="eval_keep"):
        gated(x, mask)
    gated.eval_keep = [torch.arange(3)]
    with pytest.raises(ValueError, match="eval_keep has 1 entries"):
        gated(x, mask)
    gated.eval_keep = [torch.arange(3), torch.tensor([], dtype=torch.long)]
    with pytest.raises(ValueError, match=r"eval_keep\[1\] keeps no channel"):
        gated(x, mask)
    gated.eval_keep = [torch.arange(3), torch.tensor([0, ODIM])]
    with pytest.raises(ValueError, match=r"eval_keep\[1\] must hold distinct channel indices"):
        gated(x, mask)


def test_train_mode_samples_and_gradients_reach_every_gate():
    torch.manual_seed(0)
    gated = gate(espnet_front("conv2d8", "rel"), init_keep_prob=0.5).train()
    x, mask = padded_batch()
    a, b = gated(x, mask)[0][0], gated(x, mask)[0][0]
    assert (a - b).abs().max() > 1e-4
    a.pow(2).sum().backward()
    for p in gated.gate_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_inside_espnet_conformer_encoder():
    """ESPnet's ConformerEncoder.forward dispatches on isinstance(Conv2dSubsampling*):
    the gated front end goes through the masked path and check_short_utt."""
    conf = dict(TINY_CONF, input_layer="conv2d6", num_blocks=1)
    ref = ConformerEncoder(IDIM, **conf)
    randomize(ref, 0)
    enc = copy.deepcopy(ref)
    enc.embed = gate(enc.embed)
    open_all(enc.embed)
    ref.train(), enc.train()
    x = torch.randn(2, 50, IDIM)
    lengths = torch.tensor([50, 33])
    y_ref, olens_ref, _ = ref(x, lengths)
    y, olens, _ = enc(x, lengths)
    assert torch.equal(olens, olens_ref)
    assert ((y - y_ref) * valid_mask(olens, y.size(1))).abs().max() <= 1e-5
    with pytest.raises(TooShortUttError):
        enc(torch.randn(1, 10, IDIM), torch.tensor([10]))


# ----------------------------------------------------------------------------
# Gated (eval) == shrunk
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shrunk_equals_gated_eval(kind, seed):
    pos = ["rel", "scaled", "abs"][seed]
    gated = gate(espnet_front(kind, pos, seed=seed))
    random_gates(gated, seed)
    rng = random.Random(seed * 31 + len(kind))
    x, mask = padded_batch(seed)
    gated.eval()
    for trial in range(3):
        keep = random_keep(gated, rng)
        gated.eval_keep = keep
        pruned, channels = gated.shrink()
        assert channels == [int(k.numel()) for k in keep] == subsampling_channels(pruned)
        assert type(pruned) is SUBSAMPLING_CLASSES[kind]
        with torch.no_grad():
            assert_same_output(pruned.eval()(x, mask), gated(x, mask), 1e-4)
        # the config (subsampling_channels) rebuilds the same keys and shapes
        rebuilt = pruned_subsampling(kind, IDIM, ODIM, 0.0, POS_ENCS[pos](ODIM, 0.0), channels)
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
            k: v.shape for k, v in pruned.state_dict().items()
        }
        assert list(rebuilt.state_dict()) == list(espnet_front(kind, pos).state_dict())
        rebuilt.load_state_dict(pruned.state_dict())
        if channels != [ODIM] * len(channels):  # something was really removed
            assert n_params(pruned) < n_params(espnet_front(kind, pos))
    # shrink(keep) without eval_keep, from the exact-target rule, and in float64
    gated.eval_keep = None
    keep = gated.select_keep("params", 0, 0.5 * gated.cost([ODIM] * len(gated.gates), 0)[0])
    gated64 = copy.deepcopy(gated).double()
    gated64.eval_keep = keep
    pruned, _ = gated64.shrink(keep)
    with torch.no_grad():
        assert_same_output(pruned(x.double(), mask), gated64(x.double(), mask), 1e-10)


def test_shrink_folds_fractional_gate_values():
    """Kept gates strictly between 0 and 1 (log_alpha near 0) must be folded."""
    gated = gate(espnet_front("conv2d", "abs", seed=5))
    for p in gated.gate_parameters():
        p.data.fill_(0.0)
    medians = [g.open_median() for g in gated.gates]
    assert all(((m > 0.1) & (m < 0.99)).all() for m in medians)
    gated.eval()
    gated.eval_keep = [torch.tensor([0, 2, 5]), torch.tensor([1, 3, 4, 7])]
    pruned, _ = gated.shrink()
    x, mask = padded_batch(4)
    with torch.no_grad():
        assert_same_output(pruned.eval()(x, mask), gated(x, mask), 1e-5)
        gated.eval_keep = [torch.arange(ODIM)] * 2
        unscaled = copy.deepcopy(gated)
        open_all(unscaled)
        assert (unscaled(x, mask)[0] - gated(x, mask)[0]).abs().max() > 1e-3


def test_channel_counts_are_validated():
    with pytest.raises(ValueError, match=r"subsampling_channels\[1\]=0"):
        pruned_subsampling("conv2d", IDIM, ODIM, 0.0, None, [3, 0])
    with pytest.raises(ValueError, match=r"subsampling_channels\[0\]=9"):
        pruned_subsampling("conv2d", IDIM, ODIM, 0.0, None, [9, 2])
    with pytest.raises(ValueError, match="subsampling_channels has 2 entries.*3 Conv2d"):
        pruned_subsampling("conv2d8", IDIM, ODIM, 0.0, None, [3, 2])
    with pytest.raises(ValueError, match="input_layer='linear'"):
        pruned_subsampling("linear", IDIM, ODIM, 0.0, None, [3, 2])
    gated = gate(espnet_front("conv2d"))
    with pytest.raises(ValueError, match=r"keep\[0\] keeps no channel"):
        gated.shrink([torch.tensor([], dtype=torch.long), torch.arange(2)])


def test_resize_in_place_keeps_keys():
    embed = espnet_front("conv2d8", "scaled")
    keys = list(embed.state_dict())
    assert resize_subsampling(embed, [3, 5, 2]) is embed
    assert list(embed.state_dict()) == keys
    assert subsampling_channels(embed) == [3, 5, 2]
    assert embed.out.in_features == 2 * conv_output_sizes("conv2d8", IDIM, 0)[-1][1]


# ----------------------------------------------------------------------------
# Cost model: numel() and torch's FLOP counter
# ----------------------------------------------------------------------------


def counted_macs(module, t_in: int):
    """(torch's FLOP count // 2, output frames) of one utterance of ``t_in`` frames."""
    module.eval()
    x = torch.randn(1, t_in, IDIM)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y, _ = module(x, torch.ones(1, 1, t_in, dtype=torch.bool))
    return counter.get_total_flops() // 2, split(y)[0].size(1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pos", ["abs", "scaled"])
def test_cost_equals_numel_and_flop_counter(kind, pos):
    rng = random.Random(len(kind) + len(pos))
    n = len(SUBSAMPLING_CONVS[kind])
    for trial in range(4):
        channels = [ODIM] * n if trial == 0 else [rng.randint(1, ODIM) for _ in range(n)]
        t_in = rng.randint(SHORT_LIMITS[kind], 60)
        module = pruned_subsampling(kind, IDIM, ODIM, 0.0, POS_ENCS[pos](ODIM, 0.0), channels)
        params, macs, t_out = subsampling_cost(kind, IDIM, ODIM, channels, t_in, pos == "scaled")
        assert params == n_params(module), (channels, t_in)
        assert (macs, t_out) == counted_macs(module, t_in), (channels, t_in)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scaled", [False, True])
def test_dense_cost_agrees_with_cost_frontend_cost(kind, scaled):
    conf = dict(TINY_CONF, input_layer=kind, pos_enc_layer_type="scaled_abs_pos" if scaled else "abs_pos",
                selfattention_layer_type="selfattn")
    dims = ConformerDims.from_encoder_conf(80, conf)
    n = len(SUBSAMPLING_CONVS[kind])
    for t_in in (SHORT_LIMITS[kind], 100, 1000):
        assert subsampling_cost(kind, 80, dims.output_size, [dims.output_size] * n, t_in, scaled) == (
            frontend_cost(dims, t_in)
        )
    # and the ESPnet modules have the kernels and strides of the table
    convs = [m for m in SUBSAMPLING_CLASSES[kind](IDIM, ODIM, 0.0).conv if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size[0], c.stride[0]) for c in convs] == list(SUBSAMPLING_CONVS[kind])


def test_expected_cost_exact_at_saturated_gates_and_differentiable():
    gated = gate(espnet_front("conv2d8", "scaled"))
    g = torch.Generator().manual_seed(0)
    for p in gated.gate_parameters():
        p.data.copy_(torch.where(torch.rand(p.shape, generator=g) < 0.4, -60.0, 60.0))
    gated.gates[1].log_alpha.data.fill_(-60.0)  # a conv with every gate closed keeps one channel
    channels = [max(int((p > 0).sum()), 1) for p in gated.gate_parameters()]
    expected = gated.expected_cost(300)
    params, macs, _ = gated.cost(channels, 300)
    assert expected["params"].item() == pytest.approx(params, rel=1e-6)
    assert expected["macs"].item() == pytest.approx(macs, rel=1e-6)
    keep = gated.select_keep("params", 300, params)  # the eval structure at that budget
    assert [k.numel() for k in keep] == channels
    for p in gated.gate_parameters():
        p.data.normal_(0.0, 1.0)
    cost = gated.expected_cost(300)
    (cost["params"] + cost["macs"] * 1e-3).backward()
    for p, m in zip(gated.gate_parameters(), gated.mandatory_channels()):
        others = torch.arange(p.numel()) != m
        assert (p.grad[others] > 0).all() and p.grad[m] == 0  # opening adds cost


@pytest.mark.parametrize("cost_kind", ["params", "macs"])
def test_expected_cost_of_the_groups(cost_kind):
    """The groups' differentiable expected cost (what the target selector trains on)
    is the module's expected cost."""
    from espnet_prune.budget import expected_cost

    gated = gate(espnet_front("conv2d6", "scaled"))
    random_gates(gated, 3)
    groups, constant = gated.unit_groups(cost_kind, 200)
    assert all(g.scores.requires_grad for g in groups)
    total = expected_cost(groups) + constant
    assert total.item() == pytest.approx(gated.expected_cost(200)[cost_kind].item(), rel=1e-6)  # float32
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gated.gate_parameters())


# ----------------------------------------------------------------------------
# The exact-target rule
# ----------------------------------------------------------------------------


def _random_selection(groups, rng: random.Random):
    kept = {}
    for g in groups:
        k = rng.choice([0, g.n, rng.randint(0, g.n)])
        kept[g.key] = torch.tensor(sorted(rng.sample(range(g.n), k)), dtype=torch.long)
    return kept


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cost_kind", ["params", "macs"])
def test_unit_groups_cost_is_exact(kind, cost_kind):
    gated = gate(espnet_front(kind, "scaled", odim=12), idim=IDIM)
    random_gates(gated, len(kind))
    rng = random.Random(len(kind))
    t_in = 57
    groups, constant = gated.unit_groups(cost_kind, t_in)
    assert [g.key for g in groups] == [("frontend", i) for i in range(len(gated.gates))]
    assert all(g.unit_cost > 0 and g.n == 11 for g in groups)
    index = 0 if cost_kind == "params" else 1
    for trial in range(10):
        kept = _random_selection(groups, rng)
        keep = gated.keep_from_selection(kept)
        channels = [int(k.numel()) for k in keep]
        assert channels == [1 + int(kept[g.key].numel()) for g in groups]
        mandatory = gated.mandatory_channels()
        assert all(m in k.tolist() for m, k in zip(mandatory, keep))
        exact = subsampling_cost(kind, IDIM, 12, channels, t_in, True)[index]
        assert kept_cost(groups, kept) + constant == exact, (trial, channels)
    # the mandatory channel is each conv's most probable one; the units' scores are
    # the other channels' P(z > 0), in channel order
    for g, m in zip(gated.gates, mandatory):
        assert g.keep_prob()[m] == g.keep_prob().max()
    g0 = gated.gates[0]
    others = [c for c in range(g0.n) if c != mandatory[0]]
    assert torch.equal(groups[0].scores, g0.keep_prob().detach()[others])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cost_kind", ["params", "macs"])
def test_select_units_lands_within_max_error(kind, cost_kind):
    odim = 16
    gated = gate(espnet_front(kind, "abs", odim=odim), idim=IDIM)
    t_in = 120
    n = len(gated.gates)
    index = 0 if cost_kind == "params" else 1
    dense = subsampling_cost(kind, IDIM, odim, [odim] * n, t_in)[index]
    for seed in range(3):
        random_gates(gated, seed)
        groups, constant = gated.unit_groups(cost_kind, t_in)
        bound = max_error(groups)
        for target in (0.1, 0.3, 0.5, 0.7, 0.9):
            budget = (1.0 - target) * dense
            kept = select_units(groups, max(budget - constant, 0.0))
            keep = gated.keep_from_selection(kept)
            achieved = subsampling_cost(kind, IDIM, odim, [k.numel() for k in keep], t_in)[index]
            assert achieved == kept_cost(groups, kept) + constant
            if budget <= constant:
                assert [k.numel() for k in keep] == [1] * n
            else:
                assert abs(achieved - budget) <= bound, (seed, target, achieved, budget, bound)
            again = gated.select_keep(cost_kind, t_in, budget)
            assert all(torch.equal(a, b) for a, b in zip(keep, again))
    assert bound < 0.1 * dense  # the bound is meaningful for a 16-channel front end


def test_unit_groups_reject_inputs_too_short_for_macs():
    gated = gate(espnet_front("conv2d8"))
    with pytest.raises(ValueError, match="t_in=5"):
        gated.unit_groups("macs", 5)
    with pytest.raises(ValueError, match="unknown cost metric 'flops'"):
        gated.unit_groups("flops", 100)


# ----------------------------------------------------------------------------
# Our versions of ESPnet's subsampling unit tests, on gated and pruned modules
# ----------------------------------------------------------------------------


def _variants(kind: str, dtype=torch.float32):
    """(name, module, gated) for the gated module (train, and eval with a selection) and a
    pruned module of ``kind``; ``gated`` is the gated module whose function it computes."""
    gated = gate(espnet_front(kind, "abs")).to(dtype)
    random_gates(gated, 1)
    evaluated = copy.deepcopy(gated).eval()
    evaluated.eval_keep = [torch.tensor([0, 3, 5])] * len(gated.gates)
    pruned, _ = evaluated.shrink()
    return [("gated-train", gated.train(), gated), ("gated-eval", evaluated, evaluated),
            ("pruned", pruned.eval(), evaluated)]


def masked_espnet(gated, masks: List[torch.Tensor]) -> torch.nn.Module:
    """ESPnet's module of the gated module's class holding its weights, with each Conv2d's
    output channels (weight rows and bias) times ``masks`` (>= 0): the gated function under
    those channel masks, since ``ReLU(m x) = m ReLU(x)``."""
    ref = SUBSAMPLING_CLASSES[gated.input_layer](IDIM, ODIM, 0.0, PositionalEncoding(ODIM, 0.0))
    ref = ref.to(device=masks[0].device, dtype=masks[0].dtype).train(gated.training)
    ref.load_state_dict({k: v for k, v in gated.state_dict().items() if not k.startswith("gates.")})
    with torch.no_grad():
        convs = [m for m in ref.conv if isinstance(m, torch.nn.Conv2d)]
        for conv, mask in zip(convs, masks):
            conv.weight.mul_(mask[:, None, None, None])
            conv.bias.mul_(mask)
    return ref


def applied_masks(gated, run):
    """``run()``'s output and the channel masks the gated module applied during it."""
    seen: List[torch.Tensor] = []
    relus = [m for m in gated.conv if isinstance(m, torch.nn.ReLU)]
    hooks = [r.register_forward_pre_hook(lambda m, inp: seen.append(m.channel_mask.detach().clone()))
             for r in relus]
    try:
        out = run()
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == len(relus)
    return out, seen


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_mask_and_prefix(kind, dtype):
    """Outputs (and prefix embeddings of conv2d8) of every variant equal ESPnet's module with
    the channel masks folded: the sampled ones in train mode, the kept channels at their open
    medians in eval mode (and for the pruned module, which computes the same function)."""
    tol = {torch.float32: 1e-4, torch.float64: 1e-10}[dtype]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    g = torch.Generator().manual_seed(len(kind))
    x = torch.rand(2, 40, IDIM, generator=g, dtype=dtype)
    prefix = torch.rand(2, 3, ODIM, generator=g, dtype=dtype)
    for device in devices:
        for name, module, gated in _variants(kind, dtype):
            module, gated = module.to(device), gated.to(device)
            if gated.eval_keep is not None:
                gated.eval_keep = [k.to(device) for k in gated.eval_keep]
            xd, x_mask = x.to(device), torch.ones(2, 1, 40, dtype=torch.bool, device=device)
            kwargs = [{}] + ([{"prefix_embeds": prefix.to(device)}] if kind == "conv2d8" else [])
            for kw in kwargs:
                with torch.no_grad():
                    if name == "gated-train":
                        out, masks = applied_masks(gated, lambda: module(xd, x_mask, **kw))
                    else:
                        out = module(xd, x_mask, **kw)
                        masks = []
                        for gate_, keep in zip(gated.gates, gated.eval_keep):
                            mask = torch.zeros(gate_.n, dtype=dtype, device=device)
                            mask[keep] = gate_.open_median().detach()[keep]
                            masks.append(mask)
                    expected = masked_espnet(gated, masks)(xd, x_mask, **kw)
                assert out[0].dtype == dtype and out[0].device.type == device, name
                assert_same_output(out, expected, tol)
                if kw:
                    assert out[0].size(1) == out[1].size(2) == module(xd, x_mask)[0].size(1) + 3, name
            if name == "gated-train":
                assert any(((m > 0) & (m < 1)).any() for m in masks)  # samples inside (0, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_check_short_utt(kind):
    limit = SHORT_LIMITS[kind]
    for name, module, _ in _variants(kind):
        assert check_short_utt(module, limit - 1) == (True, limit), name
        assert check_short_utt(module, limit) == (False, -1), name
        x = torch.rand(1, limit, IDIM)
        y, y_mask = module(x, torch.ones(1, 1, limit, dtype=torch.bool))
        assert y.size(1) == y_mask.size(2) >= 1, name


@pytest.mark.parametrize("kind", KINDS)
def test_uniform_batch_mask_matches_conv_length(kind):
    for t_in in (40, 57):
        expected = conv_output_sizes(kind, IDIM, t_in)[-1][0]
        for name, module, _ in _variants(kind):
            y, y_mask = module(torch.rand(2, t_in, IDIM), torch.ones(2, 1, t_in, dtype=torch.bool))
            assert y.size(1) == y_mask.size(2) == expected, name
            assert y_mask.squeeze(1).sum(1).tolist() == [expected, expected], name


@pytest.mark.parametrize("kind", KINDS)
def test_padded_masks_equal_espnet(kind):
    """Masks of padded batches are ESPnet's own (whatever its slicing rule)."""
    ref = espnet_front(kind)
    x, mask = padded_batch(2, t=63, lengths=(63, 40, 22))
    _, ref_mask = ref(x, mask)
    for name, module, _ in _variants(kind):
        _, y_mask = module(x, mask)
        assert torch.equal(y_mask, ref_mask), name
