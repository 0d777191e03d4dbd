"""Bootstrap WER statistics (espnet_prune.recipe.stats) against independent references."""

import math

import numpy as np
import pytest

from espnet_prune.data.scoring import parse_sum_counts, score_files
from espnet_prune.recipe import stats


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


# --------------------------------------------------------------------------- per utterance


REFS = {"s1-u1": "A B C D", "s1-u2": "E A B C", "s2-u3": "A B C", "s2-u4": "D D"}
#: hypotheses with hand-counted errors per utterance
HYPS = {"s1-u1": "A B C D",        # 0
        "s1-u2": "E A X C Y",      # 1 sub + 1 ins = 2
        "s2-u3": "C",              # 2 del = 2
        "s2-u4": "Q R S"}          # 2 sub + 1 ins = 3
HAND_ERRORS = [0, 2, 2, 3]


def _write(path, texts):
    path.write_text("".join(f"{u} {t}\n" for u, t in texts.items()))
    return path


def test_utterance_errors_match_hand_counts_and_scorer_totals(tmp_path):
    ref, hyp = _write(tmp_path / "ref", REFS), _write(tmp_path / "hyp", HYPS)
    counts = score_files(ref, hyp, tmp_path / "score_wer")
    from_file = parse_sum_counts((tmp_path / "score_wer" / "result.txt").read_text())
    for fmt, r, h in (("text", ref, hyp),
                      ("trn", tmp_path / "score_wer" / "ref.trn", tmp_path / "score_wer" / "hyp.trn")):
        u = stats.utterance_errors(r, h, fmt=fmt)
        assert u.errors.tolist() == HAND_ERRORS
        assert u.words.tolist() == [4, 4, 3, 2]
        assert u.total_errors == counts.err == from_file.err == 7
        assert u.total_words == counts.n_wrd == from_file.n_wrd == 13
        assert u.wer == pytest.approx(100 * 7 / 13)
    assert stats.utterance_errors(ref, hyp, fmt="text").utts == list(REFS)


def test_utterance_errors_names_missing_file_and_utterance(tmp_path):
    ref = _write(tmp_path / "ref", REFS)
    with pytest.raises(FileNotFoundError, match="nothere"):
        stats.utterance_errors(ref, tmp_path / "nothere", fmt="text")
    hyp = _write(tmp_path / "hyp", {k: v for k, v in HYPS.items() if k != "s2-u3"})
    with pytest.raises(ValueError, match="s2-u3"):
        stats.utterance_errors(ref, hyp, fmt="text")


# --------------------------------------------------------------------------- intervals


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ci_of_one_word_bernoulli_utterances_is_the_normal_interval(seed):
    """One word per utterance, errors ~ Bernoulli(0.1): the WER is a binomial proportion,
    whose 95 % interval is p +- 1.96 sqrt(p (1 - p) / n) (normal approximation; n p = 200
    makes it accurate to a few hundredths of a point). Margin: 0.15 WER points per end
    (about 1/9 of the half-width 1.31; the Monte Carlo error of a 2.5 % quantile of 2000
    replicates is about 0.04 points)."""
    n = 2000
    rng = np.random.default_rng(100 + seed)
    errors = (rng.random(n) < 0.1).astype(np.int64)
    words = np.ones(n, dtype=np.int64)
    p = errors.mean()
    half = 100 * 1.959964 * math.sqrt(p * (1 - p) / n)
    lo, hi = stats.bootstrap_ci(errors, words, n_resamples=2000, seed=seed)
    assert abs(lo - (100 * p - half)) < 0.15
    assert abs(hi - (100 * p + half)) < 0.15
    # a 90 % interval is narrower by the ratio of the normal quantiles (1.645 / 1.960)
    lo90, hi90 = stats.bootstrap_ci(errors, words, n_resamples=2000, alpha=0.10, seed=seed)
    assert (hi90 - lo90) == pytest.approx((hi - lo) * 1.644854 / 1.959964, abs=0.25)


def test_ci_contains_point_estimate_is_deterministic_and_vectorised():
    rng = np.random.default_rng(5)
    words = rng.integers(0, 20, 300)  # includes empty references
    errors = np.stack([rng.binomial(words, q) for q in (0.05, 0.2, 0.5)], axis=1)
    cis = stats.bootstrap_ci(errors, words, n_resamples=500, seed=3)
    assert cis.shape == (3, 2)
    for k in range(3):
        wer = 100 * errors[:, k].sum() / words.sum()
        assert cis[k, 0] < wer < cis[k, 1]
        # one system at a time: the same replicates (same seed), the same interval
        np.testing.assert_array_equal(
            stats.bootstrap_ci(errors[:, k], words, n_resamples=500, seed=3), cis[k])
    np.testing.assert_array_equal(cis, stats.bootstrap_ci(errors, words, 500, seed=3))
    assert not np.array_equal(cis, stats.bootstrap_ci(errors, words, 500, seed=4))


def test_resample_counts_and_a_direct_index_bootstrap():
    """The counts are a bootstrap: each row draws n utterances, each utterance is drawn
    once per replicate on average; WERs equal the ratio of the counted sums."""
    n, b = 50, 4000
    c = stats.resample_counts(n, b, seed=7)
    assert c.shape == (b, n) and (c.sum(axis=1) == n).all() and (c >= 0).all()
    assert abs(c.mean() - 1.0) < 1e-12
    # per-utterance count ~ Binomial(n, 1/n): variance (1 - 1/n)
    assert c.var() == pytest.approx(1 - 1 / n, rel=0.05)
    rng = np.random.default_rng(0)
    words = rng.integers(1, 9, n)
    errors = rng.binomial(words, 0.3)
    w = stats.bootstrap_wers(errors, words, n_resamples=b, seed=7)
    np.testing.assert_allclose(w, 100 * (c @ errors) / (c @ words))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="no words"):
        stats.bootstrap_ci(np.array([0, 0]), np.array([0, 0]))
    with pytest.raises(ValueError, match="integer"):
        stats.bootstrap_ci(np.array([0.5, 1.0]), np.array([1, 1]))
    with pytest.raises(ValueError, match="shape"):
        stats.bootstrap_ci(np.array([0, 1, 1]), np.array([1, 1]))
    with pytest.raises(ValueError, match="alpha"):
        stats.bootstrap_ci(np.array([0, 1]), np.array([1, 1]), alpha=1.5)


# --------------------------------------------------------------------------- paired


def test_identical_systems_give_one_half_ties_counted_half():
    rng = np.random.default_rng(1)
    words = rng.integers(1, 15, 400)
    e = rng.binomial(words, 0.1)
    cmp = stats.paired_bootstrap(e, e.copy(), words, n_resamples=300, seed=0)
    assert cmp.p_improvement == 0.5 and cmp.ties == 1.0
    assert cmp.delta_wer == 0.0 and list(cmp.delta_ci) == [0.0, 0.0]


def test_strictly_better_on_every_utterance_gives_one():
    rng = np.random.default_rng(2)
    words = rng.integers(1, 15, 300)
    b = rng.binomial(words, 0.2) + 1
    a = b - 1
    assert stats.paired_improvement_probability(a, b, words, n_resamples=300, seed=4) == 1.0
    assert stats.paired_improvement_probability(b, a, words, n_resamples=300, seed=4) == 0.0


def test_improvement_probability_matches_the_normal_approximation_and_is_symmetric():
    """Per-utterance error differences d_i = e_B - e_A; the resampled sum of n draws is
    about normal with mean n mean(d) and variance n var(d), so
    P(A better) = Phi(sqrt(n) mean(d) / sd(d)). Here about 0.85; margin 0.04 (the Monte
    Carlo error of 4000 replicates is 0.006, the normal approximation's error with
    n = 1000 a few thousandths)."""
    n = 1000
    rng = np.random.default_rng(11)
    words = rng.integers(5, 15, n)
    b = rng.binomial(words, 0.10) + 1
    # A: one error fewer than B on 160 utterances, one more on 140, a small net gain
    change = np.zeros(n, dtype=np.int64)
    change[:160], change[160:300] = -1, 1
    a = b + rng.permutation(change)
    d = (b - a).astype(float)
    expected = _normal_cdf(math.sqrt(n) * d.mean() / d.std())
    assert 0.7 < expected < 0.95  # the fixture is in the informative range
    p_ab = stats.paired_improvement_probability(a, b, words, n_resamples=4000, seed=9)
    p_ba = stats.paired_improvement_probability(b, a, words, n_resamples=4000, seed=9)
    assert abs(p_ab - expected) < 0.04
    assert p_ab + p_ba == 1.0  # exact: ties count one half on both sides
    cmp = stats.paired_bootstrap(a, b, words, n_resamples=4000, seed=9)
    assert cmp.delta_wer == pytest.approx(100 * (a.sum() - b.sum()) / words.sum())
    assert cmp.delta_ci[0] < cmp.delta_wer < cmp.delta_ci[1]


def test_summarize_uses_shared_replicates_and_checks_utterances():
    rng = np.random.default_rng(3)
    utts = [f"u{i}" for i in range(200)]
    words = rng.integers(1, 12, 200)
    systems = {name: stats.UtteranceErrors(utts, rng.binomial(words, q), words.copy())
               for name, q in (("base", 0.1), ("pruned", 0.12), ("control", 0.11))}
    out = stats.summarize(systems, reference="base", control="control", n_resamples=400,
                          seed=2)
    assert out["base"]["vs_reference"] is None and out["control"]["vs_control"] is None
    assert out["base"]["vs_control"] is not None
    for name, u in systems.items():
        assert out[name]["wer"] == pytest.approx(u.wer)
        assert out[name]["ci"] == stats.bootstrap_ci(u.errors, words, 400, seed=2).tolist()
    ref = stats.paired_bootstrap(systems["pruned"].errors, systems["base"].errors, words,
                                 400, seed=2).to_dict()
    assert out["pruned"]["vs_reference"] == ref
    # chosen pairs: the same replicates, so equal to a direct paired bootstrap of the two
    paired = stats.summarize(systems, reference="base", n_resamples=400, seed=2,
                             pairs=[("pruned", "control"), ("pruned", "base")])
    assert list(paired["pruned"]["vs"]) == ["control", "base"]
    assert paired["pruned"]["vs"]["base"] == ref
    assert paired["pruned"]["vs"]["control"] == stats.paired_bootstrap(
        systems["pruned"].errors, systems["control"].errors, words, 400, seed=2).to_dict()
    assert paired["control"]["vs"] == {} and paired["base"]["vs"] == {}
    with pytest.raises(ValueError, match="'nope'"):
        stats.summarize(systems, reference="base", pairs=[("pruned", "nope")])
    # a system scored on other utterances cannot be paired
    bad = dict(systems, other=stats.UtteranceErrors(utts[:-1] + ["zz"], words, words))
    with pytest.raises(ValueError, match="different utterances"):
        stats.summarize(bad, reference="base")
    with pytest.raises(ValueError, match="'nope'"):
        stats.summarize(systems, reference="base", control="nope")
