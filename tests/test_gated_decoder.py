"""GatedTransformerDecoder against ESPnet's own TransformerDecoder and against its shrunk form.

References: ESPnet's ``TransformerDecoder`` (open gates; and, for random gates, a dense
ESPnet decoder whose weights carry the eval-mode gate values, removed units zeroed), the
shrunk :class:`PrunedTransformerDecoder`, ``numel()`` and torch's FLOP counter.
"""

from __future__ import annotations

import copy
import pickle
from typing import List, Optional

import numpy as np
import pytest
import torch
import yaml

import conftest  # noqa: F401 - NLTK_DATA stub before ESPnet is imported
from conftest import TINY_CONF, assert_same_hyps, build_asr, espnet_beam, randomize_decoder
from conftest import set_random_decoder_gates, write_asr_config
from conftest import set_random_gates as set_random_encoder_gates
from espnet.nets.batch_beam_search import BatchBeamSearch
from espnet.nets.batch_beam_search_online_sim import BatchBeamSearchOnlineSim
from espnet.nets.beam_search import BeamSearch
from espnet.nets.pytorch_backend.transformer.embedding import ScaledPositionalEncoding
from espnet.nets.pytorch_backend.transformer.mask import subsequent_mask
from espnet.nets.scorers.ctc import CTCPrefixScorer
from espnet2.asr.ctc import CTC
from espnet2.asr.decoder.transformer_decoder import TransformerDecoder
from espnet_prune.budget import expected_cost, kept_cost, select_units
from espnet_prune.cost import decoder_cost
from espnet_prune.flops import count_decoder_macs
from espnet_prune.pruned_decoder import PrunedTransformerDecoder
from espnet_prune.structure import SUBLAYERS, DecoderLayerStructure
from espnet_prune.gated_decoder import (
    DECODER_GRANULARITIES,
    GatedDecoderLayer,
    GatedOutputLinear,
    GatedTransformerDecoder,
)
from espnet_prune.targets import CostContext, TargetSelector

from test_decoder import D, EOS, OPTS, V, dense_reference  # the same ESPnet reference decoder

OPEN_TOL = 1e-5
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


# =============================================================================
# Helpers
# =============================================================================


def gated_copy(ref: TransformerDecoder, **kw) -> GatedTransformerDecoder:
    """Gated decoder holding ``ref``'s weights, loaded through ``load_state_dict``."""
    gated = GatedTransformerDecoder(V, D, **dict(OPTS, **kw))
    result = gated.load_state_dict(ref.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(".gates." in k for k in result.missing_keys)
    return gated.train(ref.training)


def open_all(dec: GatedTransformerDecoder) -> None:
    """Every gate open: samples clamp to exactly 1, open medians are exactly 1."""
    for p in dec.gate_parameters():
        p.data.fill_(20.0)


def eval_values(dec: GatedTransformerDecoder):
    """Per layer and sublayer: (value of every unit, 0 for removed ones (n,), branch scale),
    read off the selection and the gates' open medians (independently of the masks code)."""
    keep = dec.eval_selection()
    dtype = next(dec.parameters()).dtype
    out = []
    for i, layer in enumerate(dec.decoders):
        per = {}
        for name, (unit_gate, attr, _, _) in SUBLAYERS.items():
            module = getattr(layer, attr)
            n = module.h if name != "ffn" else module.w_1.out_features
            unit = torch.ones(n, dtype=dtype)
            scale = torch.tensor(1.0, dtype=dtype)
            if (i, name) in keep:
                idx = keep[(i, name)]
                if unit_gate in layer.gates:
                    unit = torch.zeros(n, dtype=dtype)
                    unit[idx] = layer.gates[unit_gate].open_median().detach()[idx]
                if idx.numel() == 0:
                    scale = torch.tensor(0.0, dtype=dtype)
                elif name in layer.gates:
                    scale = layer.gates[name].open_median().detach()[0]
            per[name] = (unit, scale)
        out.append(per)
    return out


def applied_values(dec: GatedTransformerDecoder):
    """The masks the last call put on the closing projections (train mode: the samples),
    in the form of :func:`eval_values`."""
    out = []
    for layer in dec.decoders:
        per = {}
        for name, (_, attr, _, _) in SUBLAYERS.items():
            module = getattr(layer, attr)
            lin = module.w_2 if name == "ffn" else module.linear_out
            step = 1 if name == "ffn" else module.d_k
            mask, scale = lin.input_mask, lin.output_scale
            unit = torch.ones(lin.in_features // step) if mask is None else mask.detach()[::step].clone()
            per[name] = (unit, torch.tensor(1.0) if scale is None else scale.detach().clone())
        out.append(per)
    return out


def folded_reference(dec: GatedTransformerDecoder, values=None, hooks: bool = False) -> TransformerDecoder:
    """ESPnet ``TransformerDecoder`` computing the gated decoder's function under ``values``
    (default: :func:`eval_values`, the eval-mode function): each head's / unit's
    ``linear_out`` / ``w_2`` columns times its value, the sublayer scale on weight and bias
    (removed units and sublayers are zeros). Folded into the weights, or, with ``hooks``,
    applied to the input and output of those projections (the dense weights unchanged, so
    that gradients compare by name)."""
    param = next(dec.parameters())
    ref = TransformerDecoder(dec.dims.vocab_size, dec.dims.attention_dim, **dec.transformer_conf)
    ref = ref.to(param.dtype).train(dec.training)
    ref.load_state_dict({k: v for k, v in dec.state_dict().items() if ".gates." not in k})
    with torch.no_grad():
        for ref_layer, per in zip(ref.decoders, eval_values(dec) if values is None else values):
            for name, (unit, scale) in per.items():
                module = getattr(ref_layer, SUBLAYERS[name][1])
                if name == "ffn":
                    lin, cols = module.w_2, unit
                else:
                    lin, cols = module.linear_out, unit.repeat_interleave(module.d_k)
                cols, scale = cols.to(param.dtype), scale.to(param.dtype)
                if hooks:
                    lin.register_forward_pre_hook(lambda m, inp, c=cols: (inp[0] * c,))
                    lin.register_forward_hook(lambda m, inp, out, s=scale: out * s)
                else:
                    lin.weight.mul_(cols[None, :] * scale)
                    lin.bias.mul_(scale)
    return ref


def padded_batch(seed: int, linear: bool = False):
    g = torch.Generator().manual_seed(seed)
    mem = torch.randn(3, 11, D, generator=g)
    hlens = torch.tensor([11, 7, 4])
    ys = torch.randn(3, 5, V, generator=g) if linear else torch.randint(0, V, (3, 5), generator=g)
    ylens = torch.tensor([5, 3, 2])
    return mem, hlens, ys, ylens


def valid(out: torch.Tensor, ylens: torch.Tensor) -> torch.Tensor:
    return out * (torch.arange(out.size(1))[None, :] < ylens[:, None]).to(out)[..., None]


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


def _beam(cls, dec, beam: int, ctc: Optional[CTC] = None):
    return espnet_beam(cls, dec, beam, V, ctc)


# =============================================================================
# Checkpoints and configuration
# =============================================================================


def test_dense_checkpoint_loads_with_every_dense_key_matched():
    ref = dense_reference(0)
    gated = GatedTransformerDecoder(V, D, **OPTS)
    result = gated.load_state_dict(ref.state_dict(), strict=False)
    assert result.unexpected_keys == []
    gate_keys = {k for k in gated.state_dict() if ".gates." in k}
    assert set(result.missing_keys) == gate_keys
    assert "decoders.0.gates.self_heads.log_alpha" in gate_keys
    assert "decoders.2.gates.ffn.log_alpha" in gate_keys
    assert len(gate_keys) == 3 * len(DECODER_GRANULARITIES)
    assert all(isinstance(layer, GatedDecoderLayer) for layer in gated.decoders)
    dense_shapes = {k: v.shape for k, v in ref.state_dict().items()}
    assert {k: v.shape for k, v in gated.state_dict().items() if k not in gate_keys} == dense_shapes
    # the class method does the same, checking every key
    other = GatedTransformerDecoder.from_transformer_decoder(ref)
    for k, v in ref.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)
    assert len(other.gate_parameters()) == len(gate_keys)


def test_gate_granularities_and_gate_conf():
    dec = GatedTransformerDecoder(V, D, gate_granularities=["src_heads", "ffn"],
                                  gate_conf={"init_keep_prob": 0.6, "init_std": 0.0}, **OPTS)
    assert {k for k in dec.state_dict() if ".gates." in k} == {
        f"decoders.{i}.gates.{g}.log_alpha" for i in range(3) for g in ("src_heads", "ffn")}
    p = dec.decoders[0].gates["ffn"].keep_prob()
    assert abs(float(p) - 0.6) < 1e-6
    assert dec.decoders[0].gates["src_heads"].n == 4


@pytest.mark.parametrize("kwargs, key", [
    (dict(concat_after=True), "decoder_conf.concat_after"),
    (dict(normalize_before=False), "decoder_conf.normalize_before"),
    (dict(gate_granularities=["heads"]), "decoder_conf.gate_granularities"),
    (dict(gate_conf={"keep": 0.5}), "gate_conf"),
    (dict(layer_structures=[]), "decoder_conf.layer_structures"),
    (dict(input_layer="foo"), "embed"),
])
def test_bad_config_names_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        GatedTransformerDecoder(V, D, **dict(OPTS, **kwargs))


def test_print_config_shows_every_transformer_option():
    from espnet2.utils.get_default_kwargs import get_default_kwargs

    dense = get_default_kwargs(TransformerDecoder)
    gated = get_default_kwargs(GatedTransformerDecoder)
    assert {k: gated[k] for k in dense} == dense
    assert gated["gate_granularities"] is None and gated["gate_conf"] is None


# =============================================================================
# Open gates: ESPnet's TransformerDecoder exactly
# =============================================================================

VARIANTS = {
    "default": {},
    "qk_norm": dict(qk_norm=True),
    "linear_input": dict(input_layer="linear"),
    "no_output_layer": dict(use_output_layer=False),
    "scaled_pos": dict(pos_enc_class=ScaledPositionalEncoding),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_open_gates_equal_espnet(variant, mode):
    kw = VARIANTS[variant]
    ref = dense_reference(1, **kw)
    gated = GatedTransformerDecoder(V, D, **dict(OPTS, **kw))
    gated.load_state_dict(ref.state_dict(), strict=False)
    open_all(gated)
    gated.train(mode == "train")
    linear = kw.get("input_layer") == "linear"
    mem, hlens, ys, ylens = padded_batch(2, linear)
    with torch.no_grad():
        a, la = ref(mem, hlens, ys, ylens)
        b, lb = gated(mem, hlens, ys, ylens)
    assert torch.equal(la, lb) and maxdiff(valid(a, ylens), valid(b, ylens)) <= OPEN_TOL
    if mode == "eval":
        assert gated.structure() == [DecoderLayerStructure(4, 4, 24)] * 3

    # forward_one_step with its cache, and batch_score with its states, step by step
    m = subsequent_mask(5).unsqueeze(0)
    mem_mask = (torch.arange(11)[None, :] < hlens[:, None])[:, None, :]
    with torch.no_grad():
        gated.init_state(mem[0])
        cache_r = cache_g = None
        st_r, st_g = [None] * 3, [None] * 3
        for t in range(1, 6):
            yr, cache_r = ref.forward_one_step(ys[:, :t], m[:, :t, :t], mem, mem_mask, cache=cache_r)
            yg, cache_g = gated.forward_one_step(ys[:, :t], m[:, :t, :t], mem, mem_mask, cache=cache_g)
            assert maxdiff(yr, yg) <= OPEN_TOL
            if not linear:
                sr, st_r = ref.batch_score(ys[:, :t], st_r, mem)
                sg, st_g = gated.batch_score(ys[:, :t], st_g, mem)
                assert maxdiff(sr, sg) <= OPEN_TOL


@pytest.mark.parametrize("cls", [BeamSearch, BatchBeamSearch])
@pytest.mark.parametrize("with_ctc", [False, True])
def test_open_gates_beam_search_equals_espnet(cls, with_ctc):
    ref = dense_reference(3)
    gated = gated_copy(ref)
    open_all(gated)
    gated.eval()
    ctc = None
    if with_ctc:
        torch.manual_seed(4)
        ctc = CTC(V, D).eval()
    x = torch.randn(30, D, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        hyp_r = _beam(cls, ref, 4, ctc)(x=x, maxlenratio=0.0, minlenratio=0.0)
        hyp_g = _beam(cls, gated, 4, ctc)(x=x, maxlenratio=0.0, minlenratio=0.0)
    assert_same_hyps(hyp_r, hyp_g, TOL)  # float32 sums over ~20 steps of scores near -30


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_open_gates_partially_autoregressive_equals_espnet(mode):
    from espnet.nets.pytorch_backend.nets_utils import make_pad_mask

    ref = dense_reference(6)
    gated = gated_copy(ref)
    open_all(gated)
    gated.train(mode == "train")
    enc = torch.randn(4, 10, D)
    tgt = torch.randint(0, V, (4, 3))
    lengths = torch.tensor([3, 2, 3, 1])
    tgt_mask = (~make_pad_mask(lengths)[:, None, :]) & subsequent_mask(3).unsqueeze(0)
    with torch.no_grad():
        yr, sr = ref.forward_partially_AR(tgt, tgt_mask, lengths, enc)
        yg, sg = gated.forward_partially_AR(tgt, tgt_mask, lengths, enc)
    assert maxdiff(yr, yg) <= OPEN_TOL and maxdiff(sr, sg) <= OPEN_TOL


# =============================================================================
# Random gates: eval mode == shrunk decoder == ESPnet with the gate values folded in
# =============================================================================

SEEDS = [0, 1, 2, 3, 4]


@pytest.mark.parametrize("seed", SEEDS)
def test_gated_eval_equals_shrunk(seed):
    ref = dense_reference(seed)
    gated = gated_copy(ref)
    set_random_decoder_gates(gated, seed)
    gated.eval()
    shrunk, conf = gated.shrink()
    assert type(shrunk) is PrunedTransformerDecoder and not shrunk.training
    structure = gated.structure()
    assert shrunk.structure() == structure
    assert structure != [DecoderLayerStructure(4, 4, 24)] * 3  # the gates removed something
    assert conf["layer_structures"] == [s.to_dict() for s in structure]
    assert len(shrunk.decoders) == sum(not s.removed for s in structure)

    mem, hlens, ys, ylens = padded_batch(seed)
    with torch.no_grad():
        a, _ = gated(mem, hlens, ys, ylens)
        b, _ = shrunk(mem, hlens, ys, ylens)
        c, _ = folded_reference(gated)(mem, hlens, ys, ylens)
    assert maxdiff(valid(a, ylens), valid(b, ylens)) <= TOL
    assert maxdiff(valid(a, ylens), valid(c, ylens)) <= TOL

    # the written decoder_conf rebuilds the same shapes and keys (strict load)
    rebuilt = PrunedTransformerDecoder(V, D, **conf)
    rebuilt.load_state_dict(shrunk.state_dict(), strict=True)
    # and the physical size is what the cost model says
    n = sum(p.numel() for p in shrunk.parameters())
    assert n == decoder_cost(gated.dims, structure)["params"]


def test_random_gates_remove_sublayers_and_layers():
    """The seeds above cover removed sublayers of each kind and removed layers."""
    removed_layers, removed = 0, set()
    for seed in SEEDS:
        ref = dense_reference(seed)
        gated = gated_copy(ref)
        set_random_decoder_gates(gated, seed)
        gated.eval()
        for s in gated.structure():
            removed_layers += s.removed
            removed |= {name for name in ("self_heads", "src_heads", "ffn_units") if getattr(s, name) == 0}
    assert removed_layers >= 1 and removed == {"self_heads", "src_heads", "ffn_units"}


@pytest.mark.parametrize("seed", SEEDS)
def test_gated_eval_scores_equal_folded_espnet(seed):
    """Incremental decoding (run by the shrunk decoder) against ESPnet's own decoding code."""
    ref = dense_reference(seed)
    gated = gated_copy(ref)
    set_random_decoder_gates(gated, seed)
    gated.eval()
    folded = folded_reference(gated)
    mem, hlens, ys, _ = padded_batch(seed + 10)
    m = subsequent_mask(5).unsqueeze(0)
    with torch.no_grad():
        gated.init_state(mem[0])
        cache_r = cache_g = None
        st_r, st_g = [None] * 3, [None] * 3
        s1 = s2 = None
        for t in range(1, 6):
            yr, cache_r = folded.forward_one_step(ys[:, :t], m[:, :t, :t], mem, cache=cache_r)
            yg, cache_g = gated.forward_one_step(ys[:, :t], m[:, :t, :t], mem, cache=cache_g)
            assert maxdiff(yr, yg) <= TOL
            sr, st_r = folded.batch_score(ys[:, :t], st_r, mem)
            sg, st_g = gated.batch_score(ys[:, :t], st_g, mem)
            assert maxdiff(sr, sg) <= TOL
            a, s1 = folded.score(ys[0, :t], s1, mem[0])
            b, s2 = gated.score(ys[0, :t], s2, mem[0])
            assert maxdiff(a, b) <= TOL
        # teacher forcing (the masked dense weights) agrees with incremental decoding
        full, _ = gated(mem, torch.full((3,), 11), ys, torch.full((3,), 5))
        assert maxdiff(torch.log_softmax(full[:, -1], -1), yg) <= TOL


@pytest.mark.parametrize("seed", [0, 2, 3])
@pytest.mark.parametrize("cls", [BeamSearch, BatchBeamSearch])
def test_gated_eval_beam_search_equals_shrunk_and_folded_espnet(seed, cls):
    ref = dense_reference(seed)
    gated = gated_copy(ref)
    set_random_decoder_gates(gated, seed)
    gated.eval()
    shrunk, _ = gated.shrink()
    folded = folded_reference(gated)
    torch.manual_seed(seed)
    ctc = CTC(V, D).eval()
    x = torch.randn(25, D, generator=torch.Generator().manual_seed(seed + 20))
    with torch.no_grad():
        hyps = [_beam(cls, dec, 5, ctc)(x=x, maxlenratio=0.0, minlenratio=0.0)
                for dec in (gated, shrunk, folded)]
    assert_same_hyps(hyps[1], hyps[0], TOL)
    assert_same_hyps(hyps[2], hyps[0], TOL)


def test_decoding_copy_follows_gates_weights_and_selector():
    ref = dense_reference(7)
    gated = gated_copy(ref)
    set_random_decoder_gates(gated, 7)
    gated.eval()
    x = torch.randn(9, D)
    ys = torch.tensor([EOS, 3, 5])
    with torch.no_grad():
        before = gated.score(ys, None, x)[0]
        first = gated.decoding_decoder()
        assert gated.decoding_decoder() is first  # reused while nothing changes
        gated.decoders[0].feed_forward.w_1.weight.mul_(2.0)  # in place: a new version
        after_weight = gated.score(ys, None, x)[0]
        assert gated.decoding_decoder() is not first
        assert maxdiff(after_weight, folded_reference(gated).score(ys, None, x)[0]) <= TOL
        open_all(gated)
        after_gates = gated.score(ys, None, x)[0]
        assert gated.structure() == [DecoderLayerStructure(4, 4, 24)] * 3
        dense = TransformerDecoder(V, D, **OPTS).eval()
        dense.load_state_dict({k: v for k, v in gated.state_dict().items() if ".gates." not in k})
        assert maxdiff(after_gates, dense.score(ys, None, x)[0]) <= OPEN_TOL
        # a selector aiming at half the decoder's parameters takes over eval mode
        set_random_decoder_gates(gated, 7)
        TargetSelector({"decoder": gated}, "params", 0.5).attach()
        assert gated.structure() != [DecoderLayerStructure(4, 4, 24)] * 3
        assert maxdiff(gated.score(ys, None, x)[0], folded_reference(gated).score(ys, None, x)[0]) <= TOL
    assert maxdiff(before, after_weight) > 1e-3
    # copies and pickles carry neither masks nor the decoding copy, and compute the same
    mem, hlens, ys_pad, ylens = padded_batch(7)
    with torch.no_grad():
        out, _ = gated(mem, hlens, ys_pad, ylens)  # teacher forcing leaves its masks on the layers
        expected = gated.score(ys, None, x)[0]  # and decoding builds the shrunk copy
    closing = [m for m in gated.modules() if isinstance(m, GatedOutputLinear)]
    assert gated._shrunk_cache is not None and all(m.input_mask is not None for m in closing)
    for clone in (copy.deepcopy(gated), pickle.loads(pickle.dumps(gated))):
        assert clone._shrunk_cache is None
        assert all(m.input_mask is None and m.output_scale is None
                   for m in clone.modules() if isinstance(m, GatedOutputLinear))
        with torch.no_grad():
            assert maxdiff(clone.score(ys, None, x)[0], expected) <= TOL
            assert maxdiff(valid(clone(mem, hlens, ys_pad, ylens)[0], ylens), valid(out, ylens)) <= TOL


# =============================================================================
# Train mode: sampled masks, gradients
# =============================================================================


def test_train_mode_samples_and_eval_is_deterministic():
    ref = dense_reference(2)
    gated = gated_copy(ref).train()
    for p in gated.gate_parameters():
        p.data.fill_(0.0)  # P(open) ~ 0.83: samples vary
    mem, hlens, ys, ylens = padded_batch(3)
    torch.manual_seed(0)
    a, _ = gated(mem, hlens, ys, ylens)
    b, _ = gated(mem, hlens, ys, ylens)
    assert maxdiff(a, b) > 1e-3
    torch.manual_seed(0)
    c, _ = gated(mem, hlens, ys, ylens)
    assert torch.equal(a, c)
    gated.eval()
    with torch.no_grad():
        d, _ = gated(mem, hlens, ys, ylens)
        e, _ = gated(mem, hlens, ys, ylens)
    assert torch.equal(d, e)


def test_gradients_reach_log_alpha_and_weights():
    gated = gated_copy(dense_reference(4)).train()
    for p in gated.gate_parameters():
        p.data.fill_(0.0)  # samples inside (0, 1): a gradient for every gate
    mem, hlens, ys, ylens = padded_batch(4)
    torch.manual_seed(1)
    for _ in range(8):  # a sample at 0 or 1 passes no gradient: accumulate a few
        out, _ = gated(mem, hlens, ys, ylens)
        out.logsumexp(-1).sum().backward()
    for layer in gated.decoders:
        for name, gate in layer.gates.items():
            assert gate.log_alpha.grad is not None and gate.log_alpha.grad.abs().sum() > 0, name
    assert gated.decoders[0].self_attn.linear_q.weight.grad.abs().sum() > 0
    # the expected cost is differentiable too
    gated.zero_grad()
    groups, _ = gated.unit_groups("params", "model", CostContext())
    expected_cost(groups).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gated.gate_parameters())


def test_gradient_checkpointing_gives_the_same_gradients():
    ref = dense_reference(5)
    grads = []
    for layers in ([], [1, 3]):
        gated = GatedTransformerDecoder(V, D, gradient_checkpoint_layers=layers, **OPTS)
        gated.load_state_dict(ref.state_dict(), strict=False)
        for p in gated.gate_parameters():
            p.data.fill_(0.5)
        gated.train()
        mem, hlens, ys, ylens = padded_batch(5)
        torch.manual_seed(11)
        out, _ = gated(mem, hlens, ys, ylens)
        out.logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in gated.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(maxdiff(grads[0][k], grads[1][k]) <= 1e-5 for k in grads[0])


# =============================================================================
# Costs: exact for any selection
# =============================================================================


@pytest.mark.parametrize("granularities", [None, ["self_heads", "src_attn", "ffn_units", "ffn"],
                                           ["self_attn", "src_attn", "ffn"], []])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kept_cost_is_the_shrunk_decoders_params_and_macs(granularities, seed):
    ref = dense_reference(seed, qk_norm=seed == 1)
    gated = gated_copy(ref, gate_granularities=granularities, qk_norm=seed == 1)
    set_random_decoder_gates(gated, seed)
    gated.eval()
    ctx = CostContext(tokens=4, memory_frames=13)
    g = torch.Generator().manual_seed(seed)
    for metric in ("params", "macs"):
        groups, constant = gated.unit_groups(metric, "model", ctx)
        key = "params" if metric == "params" else "utterance_macs"
        full = decoder_cost(gated.dims, gated.dims.dense_structure(), memory_frames=13, tokens=4)[key]
        everything = {gr.key: torch.arange(gr.n) for gr in groups}
        assert kept_cost(groups, everything) + constant == full
        if not groups:
            assert granularities == [] and constant == full
            continue
        for fraction in torch.rand(3, generator=g).tolist():
            keep = select_units(groups, fraction * (full - constant))
            structure = gated.structure(keep)
            exact = decoder_cost(gated.dims, structure, memory_frames=13, tokens=4)[key]
            assert kept_cost(groups, keep) + constant == exact
            if metric == "params":
                shrunk, _ = gated.shrink(keep)
                assert sum(p.numel() for p in shrunk.parameters()) == exact
    assert gated.unit_groups("params", "blocks", ctx) == ([], 0.0)
    assert gated.unit_groups("macs", "encoder", ctx) == ([], 0.0)


def test_macs_are_what_torch_counts():
    """utterance MACs of the kept structure == torch's FLOP counter on the shrunk decoder."""
    gated = gated_copy(dense_reference(6))
    set_random_decoder_gates(gated, 1)
    gated.eval()
    tokens, frames = 3, 9
    groups, constant = gated.unit_groups("macs", "model", CostContext(tokens=tokens, memory_frames=frames))
    keep = gated.eval_selection()
    shrunk, _ = gated.shrink(keep)
    counted = [count_decoder_macs(shrunk, length, frames) for length in range(1, tokens + 1)]
    total = counted[0]["memory_macs"] + sum(c["token_macs"] for c in counted)
    assert kept_cost(groups, keep) + constant == total


def test_without_a_selector_eval_aims_at_the_expected_params():
    gated = gated_copy(dense_reference(8))
    set_random_decoder_gates(gated, 3)
    gated.eval()
    selector = gated.selector()
    assert isinstance(selector, TargetSelector) and selector.parts == {"decoder": gated}
    expected = float(selector.expected_cost())
    achieved = selector.achieved_cost()
    assert achieved == sum(p.numel() for p in gated.shrink()[0].parameters())
    groups, _ = gated.unit_groups("params", "model", CostContext())
    assert abs(achieved - expected) <= max(g.unit_cost + g.fixed_cost for g in groups) / 2


# =============================================================================
# ESPnet's own TransformerDecoder unit tests, against the gated class
# (test/espnet2/asr/decoder/test_transformer_decoder.py; post-norm is rejected)
# =============================================================================

TOKENS = ["<blank>", "a", "b", "c", "unk", "<eos>"]
DTYPE_TOL = {torch.float32: TOL, torch.float64: 1e-9}


def set_saturated_gates(dec: GatedTransformerDecoder, seed: int) -> None:
    """Random gates at log_alpha = +-30: every train-mode sample is exactly 1 or 0 (u is
    clamped to [1e-6, 1 - 1e-6], so |logit(u)| < 14 cannot move a sample across)."""
    g = torch.Generator().manual_seed(seed)
    for layer in dec.decoders:
        for gate in layer.gates.values():
            opened = torch.rand(gate.n, generator=g) < (0.8 if gate.n == 1 else 0.6)
            gate.log_alpha.data.copy_(torch.where(opened, 30.0, -30.0))


def saturated_values(dec: GatedTransformerDecoder):
    """The function of saturated gates, read off the signs of log_alpha: open units at 1,
    closed at 0; a sublayer with no open unit, or a closed sublayer gate, is removed."""
    out = []
    for layer in dec.decoders:
        per = {}
        for name, (unit_gate, attr, _, _) in SUBLAYERS.items():
            module = getattr(layer, attr)
            n = module.w_1.out_features if name == "ffn" else module.h
            unit = (layer.gates[unit_gate].log_alpha.detach() > 0).float() if unit_gate in layer.gates \
                else torch.ones(n)
            scale = float(layer.gates[name].log_alpha.item() > 0) if name in layer.gates else 1.0
            per[name] = (unit, torch.tensor(scale if unit.any() else 0.0))
        out.append(per)
    return out


def _espnet_style(vocab: int, dim: int, gates: str, **kw) -> GatedTransformerDecoder:
    """ESPnet's test decoder (six layers, 10 FFN units) with large random weights; dropout
    off so that in train mode only the gates are random."""
    kw.setdefault("linear_units", 10)
    kw.setdefault("dropout_rate", 0.0)
    kw.setdefault("positional_dropout_rate", 0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the initial gates (init_std) are drawn from torch's RNG
        dec = randomize_decoder(GatedTransformerDecoder(vocab, dim, **kw), 0)
    if gates == "random":
        set_random_decoder_gates(dec, 1)
    elif gates == "saturated":
        set_saturated_gates(dec, 1)
    return dec


def _reference(dec: GatedTransformerDecoder) -> TransformerDecoder:
    """What the gated decoder computes in its mode (train mode: saturated gates only)."""
    if dec.training:
        return folded_reference(dec, saturated_values(dec)).eval()
    return folded_reference(dec)


@pytest.mark.parametrize("input_layer", ["linear", "embed"])
@pytest.mark.parametrize("use_output_layer", [True, False])
@pytest.mark.parametrize("gates", ["init", "random"])
def test_espnet_backward(input_layer, use_output_layer, gates):
    """Train mode (float64): outputs and gradients of the weights and of the memory equal
    ESPnet's decoder carrying the sampled masks; log_alpha's gradient equals central finite
    differences of the same samples (same seed)."""
    dec = _espnet_style(10, 12, gates, input_layer=input_layer,
                        use_output_layer=use_output_layer).double().train()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 9, 12, generator=g, dtype=torch.float64)
    x_lens, t_lens = torch.tensor([9, 7]), torch.tensor([4, 3])
    t = torch.randint(0, 10, [2, 4], generator=g) if input_layer == "embed" else \
        torch.randn(2, 4, 10, generator=g, dtype=torch.float64)

    def loss(decoder, memory: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(3)  # the same gate samples on every call
        return decoder(memory, x_lens, t, t_lens)[0].sum()

    xs = x.clone().requires_grad_()
    loss(dec, xs).backward()
    ref = folded_reference(dec, applied_values(dec), hooks=True)
    xr = x.clone().requires_grad_()
    loss(ref, xr).backward()
    tol = DTYPE_TOL[torch.float64]
    with torch.no_grad():
        assert abs(float(loss(dec, x) - loss(ref, x))) <= tol * 1e3
    assert maxdiff(xs.grad, xr.grad) <= tol and float(xs.grad.abs().max()) > 0.1
    ref_grads = dict(ref.named_parameters())
    for name, p in dec.named_parameters():
        if ".gates." not in name:
            assert maxdiff(p.grad, ref_grads[name].grad) <= tol, name

    # log_alpha: entries whose sample was strictly inside (0, 1) (their gradient is not 0),
    # and a few others, by central differences of the loss with the same samples
    values = applied_values(dec)
    entries, inside = [], []
    for i, layer in enumerate(dec.decoders):
        for gname, gate in layer.gates.items():
            if gname in SUBLAYERS:
                sample = values[i][gname][1].reshape(1)
            else:
                sample = values[i][next(s for s, f in SUBLAYERS.items() if f[0] == gname)][0]
            for e in range(gate.n):
                (inside if 0 < sample[e] < 1 else entries).append((gate.log_alpha, e))
    picked = [inside[k] for k in torch.randperm(len(inside), generator=g)[:4]]
    picked += [entries[k] for k in torch.randperm(len(entries), generator=g)[:2]]
    eps, fd = 1e-5, []
    with torch.no_grad():
        for p, e in picked:
            up_down = []
            for sign in (1, -1):
                p.view(-1)[e] += sign * eps
                up_down.append(float(loss(dec, x)))
                p.view(-1)[e] -= sign * eps
            fd.append((up_down[0] - up_down[1]) / (2 * eps))
    fd = torch.tensor(fd, dtype=torch.float64)
    analytic = torch.stack([p.grad.view(-1)[e] for p, e in picked])
    assert (analytic - fd).abs().max() <= 1e-5 * (1 + fd.abs().max())
    assert fd.abs().max() > 1e-2  # some sampled gates are strictly inside (0, 1)


def test_espnet_post_norm_is_rejected():
    with pytest.raises(ValueError, match="normalize_before"):
        GatedTransformerDecoder(10, 12, normalize_before=False)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("gates", ["init", "random"])
def test_espnet_init_state(mode, gates):
    """``init_state`` then ``score``: ESPnet's log-probs of the folded eval-mode decoder, or
    in train mode of ESPnet's decoder carrying the masks sampled for that call."""
    decoder = _espnet_style(10, 12, gates).train(mode == "train")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(9, 12, generator=g)
    t = torch.randint(0, 10, [4], generator=g)
    with torch.no_grad():
        state = decoder.init_state(x)
        logp, new_state = decoder.score(t, state, x)
        values = applied_values(decoder) if mode == "train" else None
        ref = folded_reference(decoder, values).eval()
        assert logp.shape == (10,) and maxdiff(logp, ref.score(t, ref.init_state(x), x)[0]) <= TOL
        if mode == "eval":  # the state continues the hypothesis
            t5 = torch.cat([t, torch.tensor([3])])
            assert maxdiff(decoder.score(t5, new_state, x)[0], ref.score(t5, None, x)[0]) <= TOL


def test_espnet_invalid_type():
    with pytest.raises(ValueError):
        GatedTransformerDecoder(10, 12, input_layer="foo")


#: eval mode with initial or random gates; train mode with saturated gates (deterministic)
MODES_GATES = [("eval", "init"), ("eval", "random"), ("train", "saturated")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("maxlenratio", [1.0, 0.0, -1.0])
@pytest.mark.parametrize("mode,gates", MODES_GATES)
def test_espnet_beam_search(dtype, maxlenratio, mode, gates):
    """ESPnet's BeamSearch: the hypotheses and scores of ESPnet's decoder with the gates folded."""
    vocab = len(TOKENS)
    decoder = _espnet_style(vocab, 4, gates).to(dtype).train(mode == "train")
    hyps = []
    for dec in (decoder, _reference(decoder)):
        beam = BeamSearch(beam_size=3, vocab_size=vocab, weights={"test": 1.0},
                          scorers={"test": dec}, token_list=TOKENS, sos=vocab - 1,
                          eos=vocab - 1, pre_beam_score_key=None)
        beam.to(dtype=dtype)
        enc = torch.randn(10, 4, generator=torch.Generator().manual_seed(5)).type(dtype)
        with torch.no_grad():
            hyps.append(beam(x=enc, maxlenratio=maxlenratio, minlenratio=0.0))
    assert decoder.training == (mode == "train")
    assert_same_hyps(hyps[1], hyps[0], DTYPE_TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode,gates", MODES_GATES)
def test_espnet_batch_beam_search(dtype, mode, gates):
    """ESPnet's BatchBeamSearch: the hypotheses and scores of ESPnet's decoder with the gates folded."""
    vocab = len(TOKENS)
    decoder = _espnet_style(vocab, 4, gates).to(dtype).train(mode == "train")
    hyps = []
    for dec in (decoder, _reference(decoder)):
        beam = BatchBeamSearch(beam_size=3, vocab_size=vocab, weights={"test": 1.0},
                               scorers={"test": dec}, token_list=TOKENS, sos=vocab - 1,
                               eos=vocab - 1, pre_beam_score_key=None)
        beam.to(dtype=dtype)
        enc = torch.randn(10, 4, generator=torch.Generator().manual_seed(6)).type(dtype)
        with torch.no_grad():
            hyps.append(beam(x=enc, maxlenratio=0.0, minlenratio=0.0))
    assert decoder.training == (mode == "train")
    assert_same_hyps(hyps[1], hyps[0], DTYPE_TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gates", ["init", "random"])
def test_espnet_batch_beam_search_online_sim(dtype, gates, tmp_path):
    """ESPnet's block-wise streaming simulation with CTC, eval mode: the folded ESPnet
    decoder's hypotheses and scores."""
    vocab = len(TOKENS)
    decoder = _espnet_style(vocab, 8, gates).to(dtype).eval()
    torch.manual_seed(7)
    ctc = CTC(odim=vocab, encoder_output_size=8).to(dtype).eval()
    config = tmp_path / "config.yaml"
    config.write_text("encoder_conf:\n    block_size: 4\n    hop_size: 2\n    look_ahead: 1\n")
    hyps = []
    for dec in (decoder, _reference(decoder)):
        beam = BatchBeamSearchOnlineSim(
            beam_size=3, vocab_size=vocab, weights={"test": 0.7, "ctc": 0.3},
            scorers={"test": dec, "ctc": CTCPrefixScorer(ctc=ctc, eos=vocab - 1)},
            token_list=TOKENS, sos=vocab - 1, eos=vocab - 1, pre_beam_score_key=None)
        beam.set_streaming_config(config)
        beam.set_block_size(4)
        beam.set_hop_size(2)
        beam.set_look_ahead(1)
        beam.to(dtype=dtype)
        enc = torch.randn(10, 8, generator=torch.Generator().manual_seed(8)).type(dtype)
        with torch.no_grad():
            hyps.append(beam(x=enc, maxlenratio=0.0, minlenratio=0.0))
    assert_same_hyps(hyps[1], hyps[0], DTYPE_TOL[dtype])


# =============================================================================
# In an ESPnet ASR model: whole-model targets, Speech2Text
# =============================================================================

DECODER_CONF = dict(attention_heads=2, linear_units=32, num_blocks=2, dropout_rate=0.0,
                    positional_dropout_rate=0.0, self_attention_dropout_rate=0.0,
                    src_attention_dropout_rate=0.0)


@pytest.fixture
def gated_asr(tmp_path, monkeypatch):
    """ESPnet ASR model with gated_conformer encoder and gated_transformer decoder."""
    from espnet2.tasks.asr import decoder_choices

    monkeypatch.setitem(decoder_choices.classes, "gated_transformer", GatedTransformerDecoder)
    path = write_asr_config(tmp_path / "c.yaml", "gated_conformer", dict(TINY_CONF), input_size=20)
    conf = yaml.safe_load(path.read_text())
    conf["decoder"], conf["decoder_conf"] = "gated_transformer", dict(DECODER_CONF)
    path.write_text(yaml.safe_dump(conf))
    model, args = build_asr(path)
    assert isinstance(model.decoder, GatedTransformerDecoder)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "log_alpha" not in name:
                p.normal_(0.0, 0.3)
    set_random_encoder_gates(model.encoder, 1)
    set_random_decoder_gates(model.decoder, 2, p_kill_layer=0.0)
    return model.eval(), args


def _shrink_model(model, args):
    """Shrunk ESPnet model: every gated part (encoder and decoder) through shrink_asr_model."""
    from espnet_prune.parts import gated_parts
    from espnet_prune.shrink import shrink_asr_model

    assert list(gated_parts(model)) == ["encoder", "decoder"]
    shrunk, new_args = shrink_asr_model(model, args)
    assert new_args.decoder == "pruned_transformer"
    assert new_args.decoder_conf == model.decoder.shrink()[1]
    return shrunk.eval(), new_args


def _dense_twin(args) -> torch.nn.Module:
    """The dense ESPnet model of the same configuration (conformer, transformer)."""
    from espnet2.tasks.asr import ASRTask

    dense_args = copy.copy(args)
    dense_args.encoder, dense_args.decoder = "conformer", "transformer"
    return ASRTask.build_model(dense_args).eval()


def half_largest_unit(dense: torch.nn.Module, metric: str, frames: int = 0, tokens: int = 0) -> float:
    """Half the most one prunable unit (head, FFN unit, conv channel, front-end channel) can
    cost, its sublayer's shared part included: the exact-target rule's guaranteed error
    (``budget.py``), counted on the dense ESPnet model without the code under test.

    A unit's share of its sublayer is the module's cost over its unit count, plus the closing
    bias and the norm (params); a front-end channel's is its share of its conv and of the
    layer that reads it. Costs: ``numel`` (params), or torch's FLOP counter / 2 (MACs) for
    the encoder on ``frames`` frames and the decoder by teacher forcing on ``tokens`` tokens
    (at least what incremental decoding with cached keys and values does).
    """
    from torch.utils.flop_counter import FlopCounterMode

    enc, dec = dense.encoder, dense.decoder
    if metric == "params":
        def cost(module: torch.nn.Module) -> float:
            return float(sum(p.numel() for p in module.parameters()))
    else:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            memory, mlens, _ = enc(torch.zeros(1, frames, 20), torch.tensor([frames]))
            dec(memory, mlens, torch.zeros(1, tokens, dtype=torch.long), torch.tensor([tokens]))
        flops = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
        names = {id(m): f"{type(root).__name__}.{n}" for root in (enc, dec) for n, m in root.named_modules()}

        def cost(module: torch.nn.Module) -> float:
            return flops.get(names[id(module)], 0) / 2

    sublayers = []
    for b in enc.encoders:
        sublayers += [(b.feed_forward_macaron, b.norm_ff_macaron, b.feed_forward_macaron.w_2,
                       b.feed_forward_macaron.w_1.out_features),
                      (b.self_attn, b.norm_mha, b.self_attn.linear_out, b.self_attn.h),
                      (b.conv_module, b.norm_conv, b.conv_module.pointwise_conv2,
                       b.conv_module.pointwise_conv2.in_channels),
                      (b.feed_forward, b.norm_ff, b.feed_forward.w_2, b.feed_forward.w_1.out_features)]
    for layer in dec.decoders:
        sublayers += [(layer.self_attn, layer.norm1, layer.self_attn.linear_out, layer.self_attn.h),
                      (layer.src_attn, layer.norm2, layer.src_attn.linear_out, layer.src_attn.h),
                      (layer.feed_forward, layer.norm3, layer.feed_forward.w_2,
                       layer.feed_forward.w_1.out_features)]
    shares = [cost(module) / n + (closing.bias.numel() + cost(norm) if metric == "params" else 0.0)
              for module, norm, closing, n in sublayers]
    convs = [m for m in enc.embed.conv if isinstance(m, torch.nn.Conv2d)]
    for conv, reader in zip(convs, convs[1:] + [enc.embed.out[0]]):
        shares.append((cost(conv) + cost(reader)) / conv.out_channels)
    return max(shares) / 2


@pytest.mark.parametrize("target", [0.3, 0.5])
def test_whole_model_params_target_with_gated_decoder(gated_asr, target):
    from espnet_prune.targets import build_selector, model_params

    model, args = gated_asr
    selector = build_selector(model, "params", target).attach()
    assert set(selector.parts) == {"encoder", "decoder"}
    assert model.decoder.eval_selector is selector
    assert selector.dense_cost() == model_params(model)
    assert abs(selector.achieved_sparsity() - target) <= selector.error_bound()
    # a fixed cap: half the largest unit, counted on the dense ESPnet model
    dense = _dense_twin(args)
    assert sum(p.numel() for p in dense.parameters()) == selector.dense_cost()
    cap = half_largest_unit(dense, "params") / selector.dense_cost()
    assert abs(selector.achieved_sparsity() - target) <= cap and selector.error_bound() <= cap
    shrunk, _ = _shrink_model(model, args)
    assert sum(p.numel() for p in shrunk.parameters()) == selector.achieved_cost()
    dec_params = sum(p.numel() for p in shrunk.decoder.parameters())
    assert dec_params == decoder_cost(model.decoder.dims, model.decoder.structure())["params"]
    groups, constant = model.decoder.unit_groups("params", "model", selector.ctx)
    assert dec_params == kept_cost(groups, model.decoder.eval_selection()) + constant
    assert dec_params < sum(p.numel() for p in model.decoder.parameters()) - sum(
        p.numel() for p in model.decoder.gate_parameters())


@pytest.mark.parametrize("kind", ["params", "macs"])
def test_one_gate_state_shrinks_to_a_nested_family(gated_asr, kind):
    """The nested rule at 0.3 / 0.5 / 0.7 on one gate state (encoder blocks, front end,
    decoder): every unit kept at a sparsity is kept at every lower one, each member within
    the rule's bound and a fixed cap of its target, and each shrinks to its exact cost."""
    from espnet_prune.targets import build_selector

    model, args = gated_asr
    ctx = CostContext(seconds=2.0, frames_per_second=100.0, tokens=7)
    dense = _dense_twin(args)
    cap = half_largest_unit(dense, kind, ctx.input_frames, 7)
    members = {}
    for target in (0.7, 0.5, 0.3):
        selector = build_selector(model, kind, target, ctx, rule="nested").attach()
        assert set(selector.parts) == {"encoder", "decoder"} and model.encoder.gated_frontend
        assert abs(selector.achieved_sparsity() - target) <= selector.error_bound()
        assert abs(selector.achieved_sparsity() - target) <= cap / selector.dense_cost()
        members[target] = {name: {k: set(v.tolist()) for k, v in keep.items()}
                           for name, keep in selector.selection().items()}
        if kind == "params":
            shrunk, _ = _shrink_model(model, args)
            assert sum(p.numel() for p in shrunk.parameters()) == selector.achieved_cost()
    for small, large in ((0.7, 0.5), (0.5, 0.3)):
        for name, keep in members[small].items():
            for key, units in keep.items():
                assert units <= members[large][name][key], (small, large, name, key)
    assert members[0.7] != members[0.3]


def test_whole_model_macs_target_with_gated_decoder(gated_asr):
    from espnet_prune.bin.profile import count_encoder_macs
    from espnet_prune.targets import build_selector

    model, args = gated_asr
    ctx = CostContext(seconds=2.0, frames_per_second=100.0, tokens=7)
    selector = build_selector(model, "macs", 0.4, ctx).attach()
    shrunk, _ = _shrink_model(model, args)
    enc_macs = count_encoder_macs(shrunk.encoder, 20, ctx.input_frames)
    t_enc = shrunk.encoder(torch.zeros(1, ctx.input_frames, 20), torch.tensor([ctx.input_frames]))[0].size(1)
    ctc = t_enc * TINY_CONF["output_size"] * shrunk.ctc.ctc_lo.out_features
    dec = shrunk.decoder.cost(memory_frames=t_enc, tokens=7)["utterance_macs"]
    assert selector.achieved_cost() == enc_macs + ctc + dec
    assert abs(selector.achieved_sparsity() - 0.4) <= selector.error_bound()
    # a fixed cap: half the largest unit, counted on the dense ESPnet model
    dense = _dense_twin(args)
    dense_dec = PrunedTransformerDecoder.from_transformer_decoder(dense.decoder)
    dense_macs = (count_encoder_macs(dense.encoder, 20, ctx.input_frames) + ctc
                  + dense_dec.cost(memory_frames=t_enc, tokens=7)["utterance_macs"])
    assert selector.dense_cost() == dense_macs
    cap = half_largest_unit(dense, "macs", ctx.input_frames, 7) / dense_macs
    assert abs(selector.achieved_sparsity() - 0.4) <= cap and selector.error_bound() <= cap


def test_speech2text_decodes_gated_and_shrunk_identically(gated_asr, tmp_path):
    from espnet2.bin.asr_inference import Speech2Text
    from espnet_prune.model_io import save_asr_model

    model, args = gated_asr  # no target attached: what the reloaded gated model does too
    shrunk, shrunk_args = _shrink_model(model, args)
    save_asr_model(tmp_path / "gated", model, args)
    save_asr_model(tmp_path / "shrunk", shrunk, shrunk_args)
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((n, 20)).astype(np.float32) for n in (120, 90)]
    results: List[list] = []
    for name in ("gated", "shrunk"):
        s2t = Speech2Text(asr_train_config=str(tmp_path / name / "config.yaml"),
                          asr_model_file=str(tmp_path / name / "model.pth"),
                          beam_size=3, ctc_weight=0.3, maxlenratio=0.0, nbest=1, device="cpu")
        assert isinstance(s2t.asr_model.decoder, GatedTransformerDecoder if name == "gated"
                          else PrunedTransformerDecoder)
        results.append([s2t(f)[0] for f in feats])
    for (text_g, tok_g, ids_g, hyp_g), (text_s, tok_s, ids_s, hyp_s) in zip(*results):
        assert ids_g == ids_s and text_g == text_s
        assert abs(float(hyp_g.score) - float(hyp_s.score)) <= TOL
    assert any(r[2] for r in results[0])  # random weights still emit tokens
