"""ESPnet's own TransformerDecoder unit tests (released tree, 202511), rewritten for
PrunedTransformerDecoder: each runs on the dense decoder and on a pruned structure, and
compares with ESPnet's ``TransformerDecoder`` holding the same weights (dense), or with the
removed heads / units zeroed and the removed sublayers skipped (pruned structures).

Tolerances: 1e-4 in float32 (the fast path computes the same products in another order;
observed differences are ~1e-6), 1e-9 in float64.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Tuple

import pytest
import torch

import conftest  # noqa: F401 - NLTK_DATA stub before ESPnet is imported
from conftest import assert_same_hyps, decoder_plan, randomize_decoder, sliced_grads
from conftest import zeroed_decoder_reference
from espnet.nets.batch_beam_search import BatchBeamSearch
from espnet.nets.batch_beam_search_online_sim import BatchBeamSearchOnlineSim
from espnet.nets.beam_search import BeamSearch
from espnet.nets.pytorch_backend.nets_utils import make_pad_mask
from espnet.nets.pytorch_backend.transformer.mask import subsequent_mask
from espnet.nets.scorers.ctc import CTCPrefixScorer
from espnet2.asr.ctc import CTC
from espnet2.asr.decoder.transformer_decoder import TransformerDecoder
from espnet_prune.decoder_layer import slice_decoder_layer
from espnet_prune.pruned_decoder import PrunedTransformerDecoder

TOKENS = ["<blank>", "a", "b", "c", "unk", "<eos>"]

#: three layers: one sliced, one without self-attention, one removed
PRUNED = [dict(self_heads=2, src_heads=3, ffn_units=7),
          dict(self_heads=0, src_heads=1, ffn_units=10),
          dict(self_heads=0, src_heads=0, ffn_units=0)]
#: every sublayer present, self heads and units sliced (partially autoregressive decoding,
#: whose ESPnet code assumes all source-attention heads)
SLICED = [dict(self_heads=1, src_heads=4, ffn_units=3)] * 2

TOL = {torch.float32: 1e-4, torch.float64: 1e-9}

Plan = Optional[List[Dict[str, torch.Tensor]]]


def make(vocab: int, dim: int, structure: str, seed: int = 0,
         dtype: torch.dtype = torch.float32, **kw) -> Tuple[PrunedTransformerDecoder, TransformerDecoder, Plan]:
    """(ours, ESPnet reference, kept indices or None) in eval mode, with large random weights.

    ``dense``: three layers, ESPnet's decoder with the same state dict (every key matched);
    ``pruned`` / ``sliced``: random heads and units of a dense ESPnet decoder sliced into the
    structure built from ``layer_structures``, against that decoder with them zeroed.
    """
    kw.setdefault("linear_units", 10)
    sizes = {"pruned": PRUNED, "sliced": SLICED}.get(structure)
    num_blocks = 3 if sizes is None else len(sizes)
    dense = TransformerDecoder(vocab, dim, num_blocks=num_blocks, **kw).to(dtype)
    randomize_decoder(dense, seed).eval()
    if sizes is None:
        ours = PrunedTransformerDecoder(vocab, dim, num_blocks=num_blocks, **kw).to(dtype)
        ours.load_state_dict(dense.state_dict(), strict=True)
        return ours.eval(), dense, None
    plan = decoder_plan(dense, sizes, seed)
    ours = PrunedTransformerDecoder(vocab, dim, num_blocks=num_blocks, layer_structures=sizes, **kw)
    kept = [i for i, s in enumerate(sizes) if any(s.values())]
    assert ours.kept_layers == kept
    sliced = copy.deepcopy(dense)
    sliced.decoders = torch.nn.ModuleList(
        [slice_decoder_layer(dense.decoders[i], plan[i]["self_attn"], plan[i]["src_attn"],
                             plan[i]["ffn"]) for i in kept])
    ours.to(dtype).load_state_dict(sliced.state_dict(), strict=True)
    return ours.eval(), zeroed_decoder_reference(dense, plan).eval(), plan


def close(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    return a.shape == b.shape and float((a - b).abs().max()) <= tol


pytestmark = pytest.mark.usefixtures("one_thread")


STRUCTURES = ["dense", "pruned"]


@pytest.mark.parametrize("input_layer", ["linear", "embed"])
@pytest.mark.parametrize("normalize_before", [True, False])
@pytest.mark.parametrize("use_output_layer", [True, False])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_backward(input_layer, normalize_before, use_output_layer, structure):
    """Train-mode outputs and gradients (parameters, memory, linear inputs) equal ESPnet's
    (float64; dropout off so that train mode is deterministic)."""
    ours, ref, plan = make(10, 12, structure, dtype=torch.float64, input_layer=input_layer,
                     normalize_before=normalize_before, use_output_layer=use_output_layer,
                     dropout_rate=0.0, positional_dropout_rate=0.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 12, generator=g, dtype=torch.float64)
    x_lens = torch.tensor([9, 7], dtype=torch.long)
    if input_layer == "embed":
        t = torch.randint(0, 10, [2, 4], generator=g)
    else:
        t = torch.randn(2, 4, 10, generator=g, dtype=torch.float64)
    t_lens = torch.tensor([4, 3], dtype=torch.long)
    results = []
    for dec in (ours.train(), ref.train()):
        xs = x.clone().requires_grad_()
        ts = t.clone().requires_grad_() if input_layer == "linear" else t
        z_all, lens = dec(xs, x_lens, ts, t_lens)
        z_all.sum().backward()
        grads = {n: p.grad for n, p in dec.named_parameters()}
        results.append((z_all.detach(), lens, xs.grad, ts.grad if input_layer == "linear" else None, grads))
    (z, lens, gx, gt, grads), (z_r, lens_r, gx_r, gt_r, grads_r) = results
    tol = TOL[torch.float64]
    assert torch.equal(lens, lens_r) and close(z, z_r, tol)
    assert close(gx, gx_r, tol) and float(gx.abs().max()) > 0.1
    if gt is not None:
        assert close(gt, gt_r, tol)
    if plan is not None:
        d_k = ours.dims.d_k
        grads_r = sliced_grads(grads_r, plan, ours.kept_layers, d_k)
    assert grads.keys() == grads_r.keys()
    for name in grads:
        assert close(grads[name], grads_r[name], tol), name


@pytest.mark.parametrize("structure", STRUCTURES)
def test_init_state(structure):
    """``init_state`` then ``score``: ESPnet's log-probs, and the state continues the
    hypothesis (one more token scores as ESPnet's from scratch)."""
    ours, ref, _ = make(10, 12, structure)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 12, generator=g)
    t = torch.randint(0, 10, [4], generator=g)
    with torch.no_grad():
        state = ours.init_state(x)
        logp, new_state = ours.score(t, state, x)
        logp_r, _ = ref.score(t, ref.init_state(x), x)
        assert new_state.length == 4 and close(logp, logp_r, TOL[torch.float32])
        assert torch.allclose(logp.exp().sum(), torch.tensor(1.0))
        t5 = torch.cat([t, torch.tensor([3])])
        logp5, state5 = ours.score(t5, new_state, x)
        assert state5.length == 5 and close(logp5, ref.score(t5, None, x)[0], TOL[torch.float32])


@pytest.mark.parametrize("structure", STRUCTURES)
def test_invalid_input_layer(structure):
    with pytest.raises(ValueError):
        PrunedTransformerDecoder(10, 12, input_layer="foo",
                                 **({} if structure == "dense" else dict(num_blocks=3, layer_structures=PRUNED)))


def _scorer_beam(cls, decoder, **kw):
    vocab = len(TOKENS)
    return cls(beam_size=3, vocab_size=vocab, weights=kw.pop("weights", {"test": 1.0}),
               scorers=kw.pop("scorers", {"test": decoder}), token_list=TOKENS,
               sos=vocab - 1, eos=vocab - 1, pre_beam_score_key=None, **kw)


@pytest.mark.parametrize("normalize_before", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("maxlenratio", [1.0, 0.0, -1.0])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_beam_search(normalize_before, dtype, maxlenratio, structure):
    """ESPnet's BeamSearch: the reference's hypotheses (token sequences) and scores."""
    hyps = []
    for dec in make(len(TOKENS), 4, structure, normalize_before=normalize_before)[:2]:
        beam = _scorer_beam(BeamSearch, dec)
        beam.to(dtype=dtype)
        enc = torch.randn(10, 4, generator=torch.Generator().manual_seed(3)).type(dtype)
        with torch.no_grad():
            hyps.append(beam(x=enc, maxlenratio=maxlenratio, minlenratio=0.0))
    assert_same_hyps(hyps[1], hyps[0], TOL[dtype])
    assert hyps[0][0].yseq[0] == len(TOKENS) - 1


@pytest.mark.parametrize("normalize_before", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_batch_beam_search(normalize_before, dtype, structure):
    """ESPnet's BatchBeamSearch: the reference's hypotheses and scores."""
    hyps = []
    for dec in make(len(TOKENS), 4, structure, normalize_before=normalize_before)[:2]:
        beam = _scorer_beam(BatchBeamSearch, dec)
        beam.to(dtype=dtype)
        enc = torch.randn(10, 4, generator=torch.Generator().manual_seed(4)).type(dtype)
        with torch.no_grad():
            hyps.append(beam(x=enc, maxlenratio=0.0, minlenratio=0.0))
    assert_same_hyps(hyps[1], hyps[0], TOL[dtype])


@pytest.mark.parametrize("normalize_before", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_batch_beam_search_online_sim(normalize_before, dtype, structure, tmp_path):
    """ESPnet's block-wise streaming simulation with CTC: the reference's hypotheses and scores."""
    vocab = len(TOKENS)
    config = tmp_path / "config.yaml"
    config.write_text("encoder_conf:\n    block_size: 4\n    hop_size: 2\n    look_ahead: 1\n")
    torch.manual_seed(5)
    ctc = CTC(odim=vocab, encoder_output_size=8).to(dtype).eval()
    hyps = []
    for dec in make(vocab, 8, structure, normalize_before=normalize_before)[:2]:
        beam = _scorer_beam(BatchBeamSearchOnlineSim, dec,
                            weights={"test": 0.7, "ctc": 0.3},
                            scorers={"test": dec, "ctc": CTCPrefixScorer(ctc=ctc, eos=vocab - 1)})
        beam.set_streaming_config(config)
        beam.set_block_size(4)
        beam.set_hop_size(2)
        beam.set_look_ahead(1)
        beam.to(dtype=dtype)
        enc = torch.randn(10, 8, generator=torch.Generator().manual_seed(6)).type(dtype)
        with torch.no_grad():
            hyps.append(beam(x=enc, maxlenratio=0.0, minlenratio=0.0))
    assert_same_hyps(hyps[1], hyps[0], TOL[dtype])


@pytest.mark.parametrize("structure", ["dense", "sliced"])
def test_partially_autoregressive(structure):
    """``forward_partially_AR`` (ESPnet's ``expand_kv`` path) for layers with every sublayer:
    ESPnet's log-probs and per-layer states."""
    ours, ref, _ = make(5, 8, structure, input_layer="embed", normalize_before=True)
    g = torch.Generator().manual_seed(7)
    enc = torch.randn(5, 10, 8, generator=g)
    tgt = torch.randint(0, 5, (5, 3), generator=g)
    tgt_lengths = torch.tensor([3, 2, 3, 1, 2])
    tgt_mask = (~make_pad_mask(tgt_lengths)[:, None, :]) & subsequent_mask(3).unsqueeze(0)
    with torch.no_grad():
        y, states = ours.forward_partially_AR(tgt, tgt_mask, tgt_lengths, enc)
        y_r, states_r = ref.forward_partially_AR(tgt, tgt_mask, tgt_lengths, enc)
    assert y.shape == (5, 5) and states.shape[:2] == (len(ours.decoders), 5)
    assert close(y, y_r, TOL[torch.float32]) and close(states, states_r, TOL[torch.float32])


@pytest.mark.parametrize("layers", [PRUNED[1:], [dict(self_heads=4, src_heads=3, ffn_units=10)]])
def test_partially_autoregressive_needs_every_sublayer_and_source_head(layers):
    decoder = PrunedTransformerDecoder(5, 8, num_blocks=len(layers), linear_units=10,
                                       layer_structures=layers)
    tgt_lengths = torch.full((2,), 3, dtype=torch.long)
    tgt_mask = (~make_pad_mask(tgt_lengths)[:, None, :]) & subsequent_mask(3).unsqueeze(0)
    with pytest.raises(NotImplementedError, match="every sublayer"):
        decoder.forward_partially_AR(torch.ones(2, 3, dtype=torch.long), tgt_mask, tgt_lengths,
                                     torch.randn(2, 10, 8))
