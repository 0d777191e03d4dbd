"""ESPnet's own TransformerDecoder unit tests (released tree, 202511), rewritten for
PrunedTransformerDecoder: each runs on the dense decoder and on a pruned structure."""

from __future__ import annotations

import pytest
import torch

import conftest  # noqa: F401 - NLTK_DATA stub before ESPnet is imported
from espnet.nets.batch_beam_search import BatchBeamSearch
from espnet.nets.batch_beam_search_online_sim import BatchBeamSearchOnlineSim
from espnet.nets.beam_search import BeamSearch
from espnet.nets.pytorch_backend.nets_utils import make_pad_mask
from espnet.nets.pytorch_backend.transformer.mask import subsequent_mask
from espnet.nets.scorers.ctc import CTCPrefixScorer
from espnet2.asr.ctc import CTC
from espnet_prune.decoder import PrunedTransformerDecoder

TOKENS = ["<blank>", "a", "b", "c", "unk", "<eos>"]

#: three layers: one sliced, one without self-attention, one removed
PRUNED = [dict(self_heads=2, src_heads=3, ffn_units=7),
          dict(self_heads=0, src_heads=1, ffn_units=10),
          dict(self_heads=0, src_heads=0, ffn_units=0)]
#: every sublayer present, self heads and units sliced (partially autoregressive decoding,
#: whose ESPnet code assumes all source-attention heads)
SLICED = [dict(self_heads=1, src_heads=4, ffn_units=3)] * 2


def make(vocab: int, dim: int, structure: str, **kw) -> PrunedTransformerDecoder:
    kw.setdefault("linear_units", 10)
    if structure == "pruned":
        return PrunedTransformerDecoder(vocab, dim, num_blocks=3, layer_structures=PRUNED, **kw)
    if structure == "sliced":
        return PrunedTransformerDecoder(vocab, dim, num_blocks=2, layer_structures=SLICED, **kw)
    return PrunedTransformerDecoder(vocab, dim, **kw)


pytestmark = pytest.mark.usefixtures("one_thread")


STRUCTURES = ["dense", "pruned"]


@pytest.mark.parametrize("input_layer", ["linear", "embed"])
@pytest.mark.parametrize("normalize_before", [True, False])
@pytest.mark.parametrize("use_output_layer", [True, False])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_backward(input_layer, normalize_before, use_output_layer, structure):
    decoder = make(10, 12, structure, input_layer=input_layer,
                   normalize_before=normalize_before, use_output_layer=use_output_layer)
    x = torch.randn(2, 9, 12)
    x_lens = torch.tensor([9, 7], dtype=torch.long)
    t = torch.randint(0, 10, [2, 4]) if input_layer == "embed" else torch.randn(2, 4, 10)
    z_all, _ = decoder(x, x_lens, t, torch.tensor([4, 3], dtype=torch.long))
    z_all.sum().backward()
    grads = [p.grad for p in decoder.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_init_state(structure):
    decoder = make(10, 12, structure)
    x = torch.randn(9, 12)
    state = decoder.init_state(x)
    t = torch.randint(0, 10, [4], dtype=torch.long)
    logp, new_state = decoder.score(t, state, x)
    assert logp.shape == (10,) and new_state.length == 4


@pytest.mark.parametrize("structure", STRUCTURES)
def test_invalid_input_layer(structure):
    with pytest.raises(ValueError):
        make(10, 12, structure, input_layer="foo")


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
    decoder = make(len(TOKENS), 4, structure, normalize_before=normalize_before)
    beam = _scorer_beam(BeamSearch, decoder)
    beam.to(dtype=dtype)
    enc = torch.randn(10, 4).type(dtype)
    with torch.no_grad():
        hyps = beam(x=enc, maxlenratio=maxlenratio, minlenratio=0.0)
    assert hyps and hyps[0].yseq[0] == len(TOKENS) - 1


@pytest.mark.parametrize("normalize_before", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_batch_beam_search(normalize_before, dtype, structure):
    decoder = make(len(TOKENS), 4, structure, normalize_before=normalize_before)
    beam = _scorer_beam(BatchBeamSearch, decoder)
    beam.to(dtype=dtype)
    enc = torch.randn(10, 4).type(dtype)
    with torch.no_grad():
        hyps = beam(x=enc, maxlenratio=0.0, minlenratio=0.0)
    assert hyps


@pytest.mark.parametrize("normalize_before", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_batch_beam_search_online_sim(normalize_before, dtype, structure, tmp_path):
    vocab = len(TOKENS)
    decoder = make(vocab, 8, structure, normalize_before=normalize_before)
    ctc = CTC(odim=vocab, encoder_output_size=8)
    ctc.to(dtype)
    beam = _scorer_beam(BatchBeamSearchOnlineSim, decoder,
                        weights={"test": 0.7, "ctc": 0.3},
                        scorers={"test": decoder, "ctc": CTCPrefixScorer(ctc=ctc, eos=vocab - 1)})
    config = tmp_path / "config.yaml"
    config.write_text("encoder_conf:\n    block_size: 4\n    hop_size: 2\n    look_ahead: 1\n")
    beam.set_streaming_config(config)
    beam.set_block_size(4)
    beam.set_hop_size(2)
    beam.set_look_ahead(1)
    beam.to(dtype=dtype)
    enc = torch.randn(10, 8).type(dtype)
    with torch.no_grad():
        beam(x=enc, maxlenratio=0.0, minlenratio=0.0)


@pytest.mark.parametrize("structure", ["dense", "sliced"])
def test_partially_autoregressive(structure):
    """``forward_partially_AR`` (ESPnet's ``expand_kv`` path) for layers with every sublayer."""
    decoder = make(5, 8, structure, input_layer="embed", normalize_before=True)
    enc = torch.randn(5, 10, 8)
    tgt = torch.ones(5, 3, dtype=torch.long)
    tgt_lengths = torch.full((5,), 3, dtype=torch.long)
    tgt_mask = (~make_pad_mask(tgt_lengths)[:, None, :]) & subsequent_mask(3).unsqueeze(0)
    with torch.no_grad():
        y, states = decoder.forward_partially_AR(tgt, tgt_mask, tgt_lengths, enc)
    assert y.shape == (5, 5) and states.shape[:2] == (len(decoder.decoders), 5)


@pytest.mark.parametrize("layers", [PRUNED[1:], [dict(self_heads=4, src_heads=3, ffn_units=10)]])
def test_partially_autoregressive_needs_every_sublayer_and_source_head(layers):
    decoder = PrunedTransformerDecoder(5, 8, num_blocks=len(layers), linear_units=10,
                                       layer_structures=layers)
    tgt_lengths = torch.full((2,), 3, dtype=torch.long)
    tgt_mask = (~make_pad_mask(tgt_lengths)[:, None, :]) & subsequent_mask(3).unsqueeze(0)
    with pytest.raises(NotImplementedError, match="every sublayer"):
        decoder.forward_partially_AR(torch.ones(2, 3, dtype=torch.long), tgt_mask, tgt_lengths,
                                     torch.randn(2, 10, 8))
