"""FastCTCPrefixScorer against ESPnet 202511's CTC prefix scorers (the reference).

ESPnet's own tests of its scorer are the beam-search equality tests in
``test/test_beam_search.py`` / ``test_batch_beam_search.py`` (CTC weights 0.0 / 0.5 / 1.0,
float32 and float64, ``BeamSearch`` against ``BatchBeamSearch``); they run here with our scorer
in place of ESPnet's, on peaky and flat posteriors, short and long (750 frames: 30 s at 40 ms)
inputs, beams 1-20, plus direct checks of one scoring call (prefix scores, forward variables,
padded batches, the whole vocabulary in chunks) and of the streaming extension.
"""

from __future__ import annotations

import pytest
import torch
from espnet.nets.batch_beam_search import BatchBeamSearch
from espnet.nets.beam_search import BeamSearch
from espnet.nets.ctc_prefix_score import CTCPrefixScoreTH
from espnet.nets.scorers.ctc import CTCPrefixScorer

from search_stand_ins import VOCAB, Bigram, LogitsCTC, decode, logits
from espnet_prune import ctc_prefix
from espnet_prune.ctc_prefix import CTCPrefixScoreFast, FastCTCPrefixScorer, PrefixState

pytestmark = pytest.mark.usefixtures("one_thread")

def assert_same_nbest(ref, ours, float64: bool) -> None:
    """Same n-best token sequences; total and CTC scores equal up to the float rounding of the
    reference: 1e-6 of a score's size where ESPnet accumulates its forward variables in float32
    (a margin of 10x over the differences measured), 1e-11 where it works in float64."""
    assert [h.yseq.tolist() for h in ref] == [h.yseq.tolist() for h in ours]
    rtol = 1e-11 if float64 else 1e-6
    for a, b in zip(ref, ours):
        for key in ("score", "ctc"):
            va = float(a.score if key == "score" else a.scores["ctc"])
            vb = float(b.score if key == "score" else b.scores["ctc"])
            assert abs(va - vb) <= rtol * max(1.0, abs(va)), (key, va, vb)


SHORT = [(search, dtype, beam, w, peaky)
         for search in ("BatchBeamSearch", "BeamSearch")
         for dtype in ("float32", "float64")
         for beam in (1, 5, 10, 20)
         for w in (0.3, 0.5, 1.0)
         for peaky in (True, False)
         # ESPnet's plain scorer computes in float32 whatever the model: one dtype is enough
         if search == "BatchBeamSearch" or (dtype == "float32" and beam < 20)]


@pytest.mark.parametrize("search, dtype, beam, ctc_weight, peaky", SHORT)
def test_same_hypotheses_and_scores_as_espnet(search, dtype, beam, ctc_weight, peaky):
    """ESPnet's beam-search equality test with our scorer: 60 frames, decoded to the end."""
    search_cls = {"BatchBeamSearch": BatchBeamSearch, "BeamSearch": BeamSearch}[search]
    dtype = getattr(torch, dtype)
    x = logits(60, peaky, seed=beam)
    ref = decode(CTCPrefixScorer, search_cls, x, beam, ctc_weight, dtype)
    ours = decode(FastCTCPrefixScorer, search_cls, x, beam, ctc_weight, dtype)
    assert len(ref[0].yseq) > 3  # the decode emitted tokens
    # ESPnet's plain BeamSearch scorer (numpy) works in float32 whatever the model's dtype
    assert_same_nbest(ref, ours, dtype == torch.float64 and search_cls is BatchBeamSearch)


@pytest.mark.parametrize("beam, ctc_weight, peaky", [(20, 0.3, True), (5, 1.0, True),
                                                     (10, 0.5, False)])
def test_long_input_same_as_espnet(beam, ctc_weight, peaky):
    """750 frames (30 s at 40 ms per frame), the first 15 output steps."""
    x = logits(750, peaky, seed=7)
    ref = decode(CTCPrefixScorer, BatchBeamSearch, x, beam, ctc_weight, torch.float32, 15 / 750)
    ours = decode(FastCTCPrefixScorer, BatchBeamSearch, x, beam, ctc_weight, torch.float32,
                  15 / 750)
    assert_same_nbest(ref, ours, float64=False)


def test_batch_search_equals_plain_search():
    """ESPnet's test_batch_beam_search_equal: BatchBeamSearch with our scorer finds the best
    hypothesis ESPnet's plain BeamSearch finds with its own scorer (the best only, as in
    ESPnet's test: the two searches keep different numbers of ended hypotheses)."""
    for w in (0.5, 1.0):
        x = logits(50, True, seed=3)
        ref = decode(CTCPrefixScorer, BeamSearch, x, 4, w, torch.float64)[0]
        ours = decode(FastCTCPrefixScorer, BatchBeamSearch, x, 4, w, torch.float64)[0]
        assert ref.yseq.tolist() == ours.yseq.tolist()
        # ESPnet's plain scorer works in float32 whatever the model
        assert abs(float(ref.score) - float(ours.score)) <= 1e-5 * max(1.0, abs(float(ref.score)))


def assert_same_log_probs(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal log-probabilities; entries of probability zero (ESPnet's log 0 is -1e10, plus
    whatever its recursion added) need only be zero in both."""
    zero = ref < ctc_prefix.LOGZERO / 2
    assert torch.equal(zero, ours < ctc_prefix.LOGZERO / 2)
    torch.testing.assert_close(ours[~zero], ref[~zero], rtol=1e-12, atol=1e-9)


def test_one_call_matches_espnet_scores_and_forward_variables():
    """One scoring call of a padded batch of two utterances (lengths 30 and 22), some
    candidates repeating the last token, partial and full vocabulary: log psi (eos and blank
    included) and the forward variables of chosen (hypothesis, token) pairs equal ESPnet's."""
    g = torch.Generator().manual_seed(5)
    frames, n_hyps = 30, 3
    lp = torch.log_softmax(torch.randn(2, frames, VOCAB, generator=g, dtype=torch.float64), -1)
    lengths = torch.tensor([30, 22])
    r_prev = torch.randn(frames, 2, 2 * n_hyps, generator=g, dtype=torch.float64) * 3 - 40
    y = [torch.tensor([VOCAB - 1, 5, 7, int(t)]) for t in torch.randint(1, 9, (2 * n_hyps,),
                                                                        generator=g)]
    s_prev = torch.randn(2 * n_hyps, generator=g, dtype=torch.float64) - 20
    state = (r_prev, s_prev.unsqueeze(1).expand(-1, VOCAB), 0, 1)
    for candidates in (torch.randint(1, 10, (2 * n_hyps, 6), generator=g), None):
        if candidates is not None:  # distinct ids per row, the last token among them
            candidates = torch.stack([torch.randperm(VOCAB - 2, generator=g)[:6] + 1
                                      for _ in range(2 * n_hyps)])
            candidates[:, 0] = torch.tensor([int(t[-1]) for t in y])
        th = CTCPrefixScoreTH(lp.clone(), lengths, 0, VOCAB - 1)
        ref_scores, (r, log_psi, _, _, idmap) = th(y, state, candidates)
        fast = CTCPrefixScoreFast(lp, lengths, 0, VOCAB - 1)
        states = [PrefixState(score=s_prev[i], forward=r_prev[:, :, i]) for i in range(2 * n_hyps)]
        scores, step = fast(y, states, candidates)
        torch.testing.assert_close(scores, ref_scores, rtol=1e-12, atol=1e-9)
        for i in range(2 * n_hyps):
            for j in range(0, 6 if candidates is not None else VOCAB, 2):
                tok = int(candidates[i, j]) if candidates is not None else j
                if tok in (0, VOCAB - 1):
                    continue
                col = int(idmap[i, tok]) if idmap is not None else tok
                kept = fast.select(step, i, tok)
                fast.materialize([kept])
                assert_same_log_probs(kept.forward, r[:, :, i, col])
                assert abs(float(kept.score) - float(log_psi[i, tok])) <= 1e-12 * abs(float(log_psi[i, tok]))


def test_whole_vocabulary_in_chunks_is_the_same(monkeypatch):
    """Memory stays bounded: scoring the whole vocabulary a few candidates at a time gives
    the same scores as one block."""
    g = torch.Generator().manual_seed(9)
    lp = torch.log_softmax(torch.randn(1, 80, VOCAB, generator=g), -1)
    fast = CTCPrefixScoreFast(lp, torch.tensor([80]), 0, VOCAB - 1)
    r = fast.initial_forward(4)
    last = torch.tensor([VOCAB - 1] * 4)
    whole = fast.prefix_scores(r, last, 0, None)
    monkeypatch.setattr(ctc_prefix, "CHUNK_ELEMENTS", 80 * 4 * 3)  # 3 candidates per block
    assert torch.equal(fast.prefix_scores(r, last, 0, None), whole)


def test_streaming_extension_matches_espnet():
    """extend_prob / extend_state: forward variables over frames added later equal ESPnet's."""
    g = torch.Generator().manual_seed(4)
    full = torch.log_softmax(torch.randn(1, 40, VOCAB, generator=g, dtype=torch.float64), -1)
    th = CTCPrefixScoreTH(full[:, :25].clone(), torch.tensor([25]), 0, VOCAB - 1)
    fast = CTCPrefixScoreFast(full[:, :25], torch.tensor([25]), 0, VOCAB - 1)
    y = [torch.tensor([VOCAB - 1])] * 2
    _, (r, log_psi, f0, f1, _) = th(y, None)
    _, step = fast(y, None)
    ref_state = (r[:, :, 1, 7], log_psi[1, 7], f0, f1)
    ours = fast.select(step, 1, 7)
    th.extend_prob(full.clone())
    fast.extend_prob(full)
    ref_ext = th.extend_state(ref_state)
    ext = fast.extend_state(ours)
    assert ext.forward.shape == (40, 2)
    assert_same_log_probs(ext.forward, ref_ext[0])
    # and scoring continues from the extended state as ESPnet's does
    y2 = [torch.tensor([VOCAB - 1, 7])]
    th2 = CTCPrefixScoreTH(full.clone(), torch.tensor([40]), 0, VOCAB - 1)
    ref_scores, _ = th2(y2, (ref_ext[0].unsqueeze(2), ref_ext[1].view(1, 1).expand(1, VOCAB),
                             0, 1))
    scores, _ = fast(y2, [ext])
    torch.testing.assert_close(scores, ref_scores, rtol=1e-12, atol=1e-9)


def test_fast_decoding_installs_and_espnet_decoding_removes():
    from types import SimpleNamespace

    from espnet_prune.inference import espnet_decoding, fast_ctc_scoring

    ctc = CTCPrefixScorer(LogitsCTC(), VOCAB - 1)
    search = BatchBeamSearch(beam_size=2, vocab_size=VOCAB, sos=VOCAB - 1, eos=VOCAB - 1,
                             weights=dict(decoder=0.5, ctc=0.5),
                             scorers=dict(decoder=Bigram(VOCAB), ctc=ctc),
                             token_list=[str(i) for i in range(VOCAB)], pre_beam_score_key="full")
    assert fast_ctc_scoring(search)
    new = search.scorers["ctc"]
    assert type(new) is FastCTCPrefixScorer and new.ctc is ctc.ctc and new.eos == ctc.eos
    assert search.part_scorers["ctc"] is new
    espnet_decoding(SimpleNamespace(asr_model=SimpleNamespace(decoder=None), beam_search=search))
    assert type(search.scorers["ctc"]) is CTCPrefixScorer
    assert type(search.part_scorers["ctc"]) is CTCPrefixScorer
