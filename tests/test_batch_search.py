"""FastBatchBeamSearch against ESPnet 202511's BatchBeamSearch: the same n-best, bit for bit."""

from __future__ import annotations

import pytest
import torch
from espnet.nets.batch_beam_search import BatchBeamSearch
from espnet.nets.scorers.ctc import CTCPrefixScorer

from espnet_prune.batch_search import FastBatchBeamSearch
from espnet_prune.ctc_prefix import FastCTCPrefixScorer
from search_stand_ins import decode, logits

pytestmark = pytest.mark.usefixtures("one_thread")


def assert_identical(ref, ours) -> None:
    """Same n-best: token ids, total score and every scorer's score (``torch.equal``: the
    vectorised step does the same additions in the same order and dtypes)."""
    assert len(ref) == len(ours) > 0
    for a, b in zip(ref, ours):
        assert a.yseq.tolist() == b.yseq.tolist()
        assert a.yseq.dtype == b.yseq.dtype
        assert torch.equal(torch.as_tensor(a.score), torch.as_tensor(b.score))
        assert a.scores.keys() == b.scores.keys()
        for k in a.scores:
            assert torch.equal(torch.as_tensor(a.scores[k]), torch.as_tensor(b.scores[k])), k


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("ctc_weight", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("beam", [1, 5, 12])
def test_same_nbest_as_espnet_batch_search(dtype, ctc_weight, beam):
    dtype = getattr(torch, dtype)
    for peaky, maxlenratio in ((True, 0.0), (False, 0.0), (True, 0.2)):
        x = logits(50, peaky, seed=beam)
        for scorer in (CTCPrefixScorer, FastCTCPrefixScorer):
            ref = decode(scorer, BatchBeamSearch, x, beam, ctc_weight, dtype, maxlenratio)
            ours = decode(scorer, FastBatchBeamSearch, x, beam, ctc_weight, dtype, maxlenratio)
            assert_identical(ref, ours)


def test_fast_decoding_switches_the_search_class_and_back():
    from types import SimpleNamespace

    from espnet_prune.inference import espnet_decoding, fast_decoding

    from search_stand_ins import VOCAB, Bigram, LogitsCTC

    search = BatchBeamSearch(beam_size=2, vocab_size=VOCAB, sos=VOCAB - 1, eos=VOCAB - 1,
                             weights=dict(decoder=0.5, ctc=0.5),
                             scorers=dict(decoder=Bigram(VOCAB),
                                          ctc=CTCPrefixScorer(LogitsCTC(), VOCAB - 1)),
                             token_list=[str(i) for i in range(VOCAB)], pre_beam_score_key="full")
    s2t = SimpleNamespace(asr_model=SimpleNamespace(decoder=None), beam_search=search)
    assert fast_decoding(s2t, require=False) is False  # no Transformer decoder to replace
    assert type(search) is FastBatchBeamSearch
    assert type(search.scorers["ctc"]) is FastCTCPrefixScorer
    espnet_decoding(s2t)
    assert type(search) is BatchBeamSearch and type(search.scorers["ctc"]) is CTCPrefixScorer


@pytest.mark.parametrize("ctc_weight", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("beam", [1, 5, 10])
def test_stopping_when_the_1best_is_decided_keeps_it_in_fewer_steps(ctc_weight, beam):
    """No length bonus: every step adds log probabilities, scores never grow, and the search
    may stop once the best ended hypothesis leads every running one: ESPnet's 1-best (tokens,
    total and per-scorer scores) in fewer steps, over peaky and flat posteriors."""
    ref_steps, our_steps = [], []
    for seed in range(2):
        for peaky in (True, False):
            x = logits(60, peaky, seed=seed + 10 * beam)
            ref = decode(FastCTCPrefixScorer, BatchBeamSearch, x, beam, ctc_weight, torch.float32,
                         length_bonus=0.0, steps=ref_steps)
            ours = decode(FastCTCPrefixScorer, FastBatchBeamSearch, x, beam, ctc_weight, torch.float32,
                          length_bonus=0.0, stop_when_decided=True, steps=our_steps)
            assert_identical(ref[:1], ours[:1])
            assert our_steps[-1] <= ref_steps[-1]
    if beam > 1:  # (a beam of one has nothing left running once its hypothesis ends)
        assert sum(our_steps) < sum(ref_steps), (our_steps, ref_steps)


def test_no_early_stop_when_a_score_can_grow():
    """A positive length bonus makes scores grow: the whole n-best stays ESPnet's."""
    for seed in range(3):
        x = logits(50, True, seed=seed)
        ref = decode(FastCTCPrefixScorer, BatchBeamSearch, x, 5, 0.3, torch.float32, length_bonus=0.5)
        ours = decode(FastCTCPrefixScorer, FastBatchBeamSearch, x, 5, 0.3, torch.float32, length_bonus=0.5,
                      stop_when_decided=True)
        assert_identical(ref, ours)
