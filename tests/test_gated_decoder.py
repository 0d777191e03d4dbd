"""GatedTransformerDecoder against ESPnet's own TransformerDecoder and against its shrunk form.

References: ESPnet's ``TransformerDecoder`` (open gates; and, for random gates, a dense
ESPnet decoder whose weights carry the eval-mode gate values, removed units zeroed), the
shrunk :class:`PrunedTransformerDecoder`, ``numel()`` and torch's FLOP counter.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional

import numpy as np
import pytest
import torch
import yaml

import conftest  # noqa: F401 - NLTK_DATA stub before ESPnet is imported
from conftest import TINY_CONF, build_asr, set_random_gates as set_random_encoder_gates
from conftest import write_asr_config
from espnet.nets.batch_beam_search import BatchBeamSearch
from espnet.nets.batch_beam_search_online_sim import BatchBeamSearchOnlineSim
from espnet.nets.beam_search import BeamSearch
from espnet.nets.pytorch_backend.transformer.embedding import ScaledPositionalEncoding
from espnet.nets.pytorch_backend.transformer.mask import subsequent_mask
from espnet.nets.scorers.ctc import CTCPrefixScorer
from espnet.nets.scorers.length_bonus import LengthBonus
from espnet2.asr.ctc import CTC
from espnet2.asr.decoder.transformer_decoder import TransformerDecoder
from espnet_prune.budget import expected_cost, kept_cost, select_units
from espnet_prune.decoder import (
    SUBLAYERS,
    DecoderLayerStructure,
    PrunedTransformerDecoder,
    count_decoder_macs,
    decoder_cost,
)
from espnet_prune.gated_decoder import (
    DECODER_GRANULARITIES,
    GatedDecoderLayer,
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


def set_random_gates(dec: GatedTransformerDecoder, seed: int, p_close: float = 0.3,
                     p_kill_layer: float = 0.25) -> None:
    """Random log_alpha: units spread out, some sublayers and some whole layers closed."""
    g = torch.Generator().manual_seed(seed)
    for layer in dec.decoders:
        kill = torch.rand(1, generator=g).item() < p_kill_layer
        for name, gate in layer.gates.items():
            if gate.n == 1:
                closed = kill or torch.rand(1, generator=g).item() < p_close
                la = torch.full((1,), -10.0 if closed else 5.0)
            else:
                la = torch.randn(gate.n, generator=g) * 3.0
                sublayer = next(s for s, f in SUBLAYERS.items() if f[0] == name)
                if kill and sublayer not in layer.gates:
                    la = torch.full((gate.n,), -10.0)
            gate.log_alpha.data.copy_(la)


def eval_values(dec: GatedTransformerDecoder):
    """Per layer and sublayer: (value of every unit, 0 for removed ones (n,), branch scale),
    read off the selection and the gates' open medians (independently of the masks code)."""
    keep = dec.eval_selection()
    out = []
    for i, layer in enumerate(dec.decoders):
        per = {}
        for name, (unit_gate, attr, _, _) in SUBLAYERS.items():
            module = getattr(layer, attr)
            n = module.h if name != "ffn" else module.w_1.out_features
            unit = torch.ones(n)
            scale = torch.tensor(1.0)
            if (i, name) in keep:
                idx = keep[(i, name)]
                if unit_gate in layer.gates:
                    unit = torch.zeros(n)
                    unit[idx] = layer.gates[unit_gate].open_median().detach()[idx]
                if idx.numel() == 0:
                    scale = torch.tensor(0.0)
                elif name in layer.gates:
                    scale = layer.gates[name].open_median().detach()[0]
            per[name] = (unit, scale)
        out.append(per)
    return out


def folded_reference(dec: GatedTransformerDecoder) -> TransformerDecoder:
    """ESPnet ``TransformerDecoder`` computing the gated decoder's eval-mode function: each
    head's / unit's ``linear_out`` / ``w_2`` columns times its value, the sublayer scale
    folded into weight and bias (removed units and sublayers are zeros)."""
    ref = TransformerDecoder(V, D, **dec.transformer_conf).eval()
    ref.load_state_dict({k: v for k, v in dec.state_dict().items() if ".gates." not in k})
    with torch.no_grad():
        for ref_layer, per in zip(ref.decoders, eval_values(dec)):
            for name, (unit, scale) in per.items():
                module = getattr(ref_layer, SUBLAYERS[name][1])
                if name == "ffn":
                    lin, cols = module.w_2, unit
                else:
                    lin, cols = module.linear_out, unit.repeat_interleave(module.d_k)
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
    scorers: Dict[str, object] = dict(decoder=dec, length_bonus=LengthBonus(V))
    weights = dict(decoder=1.0, length_bonus=0.1)
    if ctc is not None:
        scorers["ctc"] = CTCPrefixScorer(ctc, EOS)
        weights = dict(decoder=0.7, ctc=0.3, length_bonus=0.1)
    return cls(beam_size=beam, weights=weights, scorers=scorers, sos=EOS, eos=EOS, vocab_size=V,
               token_list=[f"t{i}" for i in range(V)],
               pre_beam_score_key=None if ctc is None else "full")


def assert_same_hyps(ref_hyps, our_hyps, tol: float) -> None:
    assert len(ref_hyps) == len(our_hyps) > 0
    for h1, h2 in zip(ref_hyps, our_hyps):
        assert h1.yseq.tolist() == h2.yseq.tolist()
        assert abs(float(h1.score) - float(h2.score)) <= tol


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
        hyp_r = _beam(cls, ref, 4, ctc).eval()(x=x, maxlenratio=0.0, minlenratio=0.0)
        hyp_g = _beam(cls, gated, 4, ctc).eval()(x=x, maxlenratio=0.0, minlenratio=0.0)
    assert_same_hyps(hyp_r, hyp_g, OPEN_TOL)


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
    set_random_gates(gated, seed)
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
        set_random_gates(gated, seed)
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
    set_random_gates(gated, seed)
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
    set_random_gates(gated, seed)
    gated.eval()
    shrunk, _ = gated.shrink()
    folded = folded_reference(gated)
    torch.manual_seed(seed)
    ctc = CTC(V, D).eval()
    x = torch.randn(25, D, generator=torch.Generator().manual_seed(seed + 20))
    with torch.no_grad():
        hyps = [_beam(cls, dec, 5, ctc).eval()(x=x, maxlenratio=0.0, minlenratio=0.0)
                for dec in (gated, shrunk, folded)]
    assert_same_hyps(hyps[1], hyps[0], TOL)
    assert_same_hyps(hyps[2], hyps[0], TOL)


def test_decoding_copy_follows_gates_weights_and_selector():
    ref = dense_reference(7)
    gated = gated_copy(ref)
    set_random_gates(gated, 7)
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
        set_random_gates(gated, 7)
        TargetSelector({"decoder": gated}, "params", 0.5).attach()
        assert gated.structure() != [DecoderLayerStructure(4, 4, 24)] * 3
        assert maxdiff(gated.score(ys, None, x)[0], folded_reference(gated).score(ys, None, x)[0]) <= TOL
    assert maxdiff(before, after_weight) > 1e-3
    # copies and pickles carry neither masks nor the decoding copy
    copy.deepcopy(gated)


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
    set_random_gates(gated, seed)
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
    set_random_gates(gated, 1)
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
    set_random_gates(gated, 3)
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


def _espnet_style(vocab: int, dim: int, gates: str, **kw) -> GatedTransformerDecoder:
    kw.setdefault("linear_units", 10)
    dec = GatedTransformerDecoder(vocab, dim, **kw)
    if gates == "random":
        set_random_gates(dec, 1)
    return dec


@pytest.mark.parametrize("input_layer", ["linear", "embed"])
@pytest.mark.parametrize("use_output_layer", [True, False])
@pytest.mark.parametrize("gates", ["init", "random"])
def test_espnet_backward(input_layer, use_output_layer, gates):
    decoder = _espnet_style(10, 12, gates, input_layer=input_layer, use_output_layer=use_output_layer)
    x = torch.randn(2, 9, 12)
    x_lens = torch.tensor([9, 7], dtype=torch.long)
    t = torch.randint(0, 10, [2, 4]) if input_layer == "embed" else torch.randn(2, 4, 10)
    z_all, _ = decoder(x, x_lens, t, torch.tensor([4, 3], dtype=torch.long))
    z_all.sum().backward()


def test_espnet_post_norm_is_rejected():
    with pytest.raises(ValueError, match="normalize_before"):
        GatedTransformerDecoder(10, 12, normalize_before=False)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_espnet_init_state(mode):
    decoder = _espnet_style(10, 12, "random").train(mode == "train")
    x = torch.randn(9, 12)
    state = decoder.init_state(x)
    t = torch.randint(0, 10, [4], dtype=torch.long)
    logp, _ = decoder.score(t, state, x)
    assert logp.shape == (10,)


def test_espnet_invalid_type():
    with pytest.raises(ValueError):
        GatedTransformerDecoder(10, 12, input_layer="foo")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("maxlenratio", [1.0, 0.0, -1.0])
@pytest.mark.parametrize("gates", ["init", "random"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_espnet_beam_search(dtype, maxlenratio, gates, mode):
    vocab = len(TOKENS)
    decoder = _espnet_style(vocab, 4, gates).train(mode == "train")
    beam = BeamSearch(beam_size=3, vocab_size=vocab, weights={"test": 1.0},
                      scorers={"test": decoder}, token_list=TOKENS, sos=vocab - 1,
                      eos=vocab - 1, pre_beam_score_key=None)
    beam.to(dtype=dtype)
    decoder.train(mode == "train")
    enc = torch.randn(10, 4).type(dtype)
    with torch.no_grad():
        beam(x=enc, maxlenratio=maxlenratio, minlenratio=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gates", ["init", "random"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_espnet_batch_beam_search(dtype, gates, mode):
    vocab = len(TOKENS)
    decoder = _espnet_style(vocab, 4, gates)
    beam = BatchBeamSearch(beam_size=3, vocab_size=vocab, weights={"test": 1.0},
                           scorers={"test": decoder}, token_list=TOKENS, sos=vocab - 1,
                           eos=vocab - 1, pre_beam_score_key=None)
    beam.to(dtype=dtype)
    decoder.train(mode == "train")
    enc = torch.randn(10, 4).type(dtype)
    with torch.no_grad():
        beam(x=enc, maxlenratio=0.0, minlenratio=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gates", ["init", "random"])
def test_espnet_batch_beam_search_online_sim(dtype, gates, tmp_path):
    vocab = len(TOKENS)
    decoder = _espnet_style(vocab, 8, gates)
    ctc = CTC(odim=vocab, encoder_output_size=8)
    ctc.to(dtype)
    beam = BatchBeamSearchOnlineSim(
        beam_size=3, vocab_size=vocab, weights={"test": 0.7, "ctc": 0.3},
        scorers={"test": decoder, "ctc": CTCPrefixScorer(ctc=ctc, eos=vocab - 1)},
        token_list=TOKENS, sos=vocab - 1, eos=vocab - 1, pre_beam_score_key=None)
    config = tmp_path / "config.yaml"
    config.write_text("encoder_conf:\n    block_size: 4\n    hop_size: 2\n    look_ahead: 1\n")
    beam.set_streaming_config(config)
    beam.set_block_size(4)
    beam.set_hop_size(2)
    beam.set_look_ahead(1)
    beam.to(dtype=dtype)
    decoder.eval()
    enc = torch.randn(10, 8).type(dtype)
    with torch.no_grad():
        beam(x=enc, maxlenratio=0.0, minlenratio=0.0)


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
    set_random_gates(model.decoder, 2, p_kill_layer=0.0)
    return model.eval(), args


def _shrink_model(model, args):
    """Shrunk ESPnet model: encoder through shrink_asr_model, decoder through its shrink()."""
    from espnet_prune.shrink import shrink_asr_model

    shrunk, new_args = shrink_asr_model(model, args)
    decoder, conf = model.decoder.shrink()
    shrunk.decoder = decoder
    new_args.decoder, new_args.decoder_conf = "pruned_transformer", conf
    return shrunk.eval(), new_args


@pytest.mark.parametrize("target", [0.3, 0.5])
def test_whole_model_params_target_with_gated_decoder(gated_asr, target):
    from espnet_prune.targets import build_selector, model_params

    model, args = gated_asr
    selector = build_selector(model, "params", target).attach()
    assert set(selector.parts) == {"encoder", "decoder"}
    assert model.decoder.eval_selector is selector
    assert selector.dense_cost() == model_params(model)
    assert abs(selector.achieved_sparsity() - target) <= selector.error_bound()
    shrunk, _ = _shrink_model(model, args)
    assert sum(p.numel() for p in shrunk.parameters()) == selector.achieved_cost()
    dec_params = sum(p.numel() for p in shrunk.decoder.parameters())
    assert dec_params == decoder_cost(model.decoder.dims, model.decoder.structure())["params"]
    groups, constant = model.decoder.unit_groups("params", "model", selector.ctx)
    assert dec_params == kept_cost(groups, model.decoder.eval_selection()) + constant
    assert dec_params < sum(p.numel() for p in model.decoder.parameters()) - sum(
        p.numel() for p in model.decoder.gate_parameters())


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
