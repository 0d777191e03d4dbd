"""Bootstrap statistics of word error rates over utterances.

Per-utterance word errors come from the same alignment as the scorer's
(:func:`espnet_prune.data.scoring.score`: sclite's weights and tie-breaking), so their
sums are the ``Sum`` line of ``result.txt``.

* :func:`bootstrap_ci`: percentile confidence interval of the corpus WER
  (``100 * sum(errors) / sum(words)``) under resampling of utterances with
  replacement (Efron's bootstrap; Bisani and Ney, 2004, section 2).
* :func:`paired_improvement_probability`: Bisani and Ney's (2004) *probability of
  improvement*: both systems are scored on the **same** resampled utterance sets, and
  the probability that system A is better than B is the fraction of resamples in which
  A has fewer errors than B (equivalently a lower WER: both share the reference words
  of a resample). **Ties count one half**, so two identical systems get exactly 0.5 and
  ``P(A better than B) + P(B better than A) = 1``.

Resampling draws, for every bootstrap replicate, how many times each of the ``n``
utterances is picked (a multinomial of ``n`` draws over ``n`` equally likely
utterances, which is the same distribution as drawing ``n`` indices with replacement)
from ``numpy.random.default_rng(seed)``: every result is a deterministic function of
the seed, and every statistic is an exact integer matrix product of those counts with
the per-utterance errors, so many systems are resampled at once and share replicates.

Reference: M. Bisani and H. Ney, "Bootstrap estimates for confidence intervals in ASR
performance evaluation", ICASSP 2004.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

#: Default number of bootstrap replicates.
N_RESAMPLES = 1000


@dataclass
class UtteranceErrors:
    """Per-utterance scoring of one hypothesis file.

    Attributes:
        utts: utterance ids, reference order (as in the scored files).
        errors: (n,) int64, substitutions + deletions + insertions per utterance.
        words: (n,) int64, reference words per utterance.
    """

    utts: List[str]
    errors: np.ndarray
    words: np.ndarray

    @property
    def total_errors(self) -> int:
        return int(self.errors.sum())

    @property
    def total_words(self) -> int:
        return int(self.words.sum())

    @property
    def wer(self) -> float:
        """Corpus WER in percent (nan without reference words)."""
        w = self.total_words
        return 100.0 * self.total_errors / w if w else float("nan")


def utterance_errors(ref: PathLike, hyp: PathLike, fmt: str = "trn",
                     case_sensitive: bool = False) -> UtteranceErrors:
    """Word errors and reference words per utterance of ``hyp`` against ``ref``.

    Args:
        ref, hyp: ``trn`` files (``WORDS (uttid)``, as in ESPnet's ``score_wer``) with
            ``fmt="trn"``, or Kaldi ``text`` files with ``fmt="text"``.
        case_sensitive: as the scorer's option (sclite ``-s``).

    Raises:
        FileNotFoundError: a file is missing. ValueError: an utterance is missing from
            or unknown to the hypotheses (the message names the file and utterance).
    """
    from espnet_prune.data.scoring import read_text, read_trn, score

    readers = {"trn": read_trn, "text": read_text}
    if fmt not in readers:
        raise ValueError(f"unknown format {fmt!r} (trn or text)")
    for p in (ref, hyp):
        if not Path(p).is_file():
            raise FileNotFoundError(f"transcripts not found: {p}")
    refs, hyps = readers[fmt](ref), readers[fmt](hyp)
    try:
        result = score(refs, hyps, case_sensitive=case_sensitive)
    except ValueError as e:
        raise ValueError(f"{hyp} against {ref}: {e}") from None
    utts = list(result.per_utt)
    errors = np.array([result.per_utt[u].n_err for u in utts], dtype=np.int64)
    words = np.array([result.per_utt[u].n_ref for u in utts], dtype=np.int64)
    return UtteranceErrors(utts=utts, errors=errors, words=words)


def resample_counts(n: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """How often each of ``n`` utterances is drawn in each bootstrap replicate.

    Returns:
        (n_resamples, n) int64; every row sums to ``n``.
    """
    if n < 1:
        raise ValueError(f"bootstrap needs at least one utterance, got {n}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.int64)


def _as_matrix(errors: np.ndarray, n: int, name: str) -> np.ndarray:
    e = np.asarray(errors)
    if e.ndim not in (1, 2) or e.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},) or ({n}, systems), got {e.shape}")
    if not np.issubdtype(e.dtype, np.integer):
        raise ValueError(f"{name}: expected integer counts, got dtype {e.dtype}")
    return e.astype(np.int64).reshape(n, -1)


def _check_words(words: np.ndarray) -> np.ndarray:
    w = np.asarray(words)
    if w.ndim != 1 or not np.issubdtype(w.dtype, np.integer):
        raise ValueError(f"words: expected a 1-D integer array, got shape {w.shape} "
                         f"dtype {w.dtype}")
    if w.sum() <= 0:
        raise ValueError("words: the reference has no words, the WER is undefined")
    return w.astype(np.int64)


def bootstrap_wers(errors: np.ndarray, words: np.ndarray, n_resamples: int = N_RESAMPLES,
                   seed: int = 0) -> np.ndarray:
    """Corpus WER (%) of every bootstrap replicate.

    Args:
        errors: (n,) or (n, systems) integer word errors per utterance.
        words: (n,) reference words per utterance.

    Returns:
        (n_resamples,) or (n_resamples, systems) float64 WERs in percent. Replicates
        with no reference word (possible only when most utterances are empty) get the
        WER of the full set, so that no replicate is undefined.
    """
    w = _check_words(words)
    e = _as_matrix(errors, w.shape[0], "errors")
    out = _wers(e, w, resample_counts(w.shape[0], n_resamples, seed))
    return out[:, 0] if np.asarray(errors).ndim == 1 else out


def _wers(e: np.ndarray, w: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(B, systems) WERs (%) of (n, systems) errors ``e`` on replicate counts ``c``."""
    err, wrd = c @ e, c @ w
    full = 100.0 * e.sum(axis=0) / w.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(wrd[:, None] > 0, 100.0 * err / np.maximum(wrd, 1)[:, None], full)


def bootstrap_ci(errors: np.ndarray, words: np.ndarray, n_resamples: int = N_RESAMPLES,
                 alpha: float = 0.05, seed: int = 0) -> np.ndarray:
    """Percentile bootstrap confidence interval of the corpus WER, in percent.

    The ``alpha / 2`` and ``1 - alpha / 2`` quantiles (numpy's default linear
    interpolation) of the WERs of ``n_resamples`` replicates of the utterances.

    Args:
        errors: (n,) or (n, systems) integer word errors per utterance.
        words: (n,) reference words per utterance.
        alpha: 1 - confidence level (0.05: a 95 % interval).

    Returns:
        (2,) ``[low, high]``, or (systems, 2) for a 2-D ``errors``.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    wers = bootstrap_wers(errors, words, n_resamples, seed)
    q = np.quantile(wers, [alpha / 2, 1 - alpha / 2], axis=0)
    return q.T


@dataclass
class PairedComparison:
    """Paired bootstrap of system A against system B on the same utterances.

    Attributes:
        p_improvement: P(A better than B): fraction of replicates with fewer errors for
            A, ties counted one half.
        delta_wer: WER(A) - WER(B) on the full set, in absolute percent (negative: A is
            better).
        delta_ci: (2,) percentile interval of that difference over the replicates.
        ties: fraction of replicates with equal errors.
    """

    p_improvement: float
    delta_wer: float
    delta_ci: np.ndarray
    ties: float

    def to_dict(self) -> Dict[str, object]:
        return {"p_improvement": self.p_improvement, "delta_wer": self.delta_wer,
                "delta_ci": [float(x) for x in self.delta_ci], "ties": self.ties}


def _paired(a: np.ndarray, b: np.ndarray, w: np.ndarray, c: np.ndarray,
            alpha: float) -> PairedComparison:
    """Paired comparison of (n,) errors ``a`` and ``b`` on replicate counts ``c``."""
    n_resamples = c.shape[0]
    diff = c @ (b - a)  # > 0: A has fewer errors in that replicate
    wrd = c @ w
    p = (np.count_nonzero(diff > 0) + 0.5 * np.count_nonzero(diff == 0)) / n_resamples
    full = 100.0 * float((a - b).sum()) / float(w.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(wrd > 0, -100.0 * diff / np.maximum(wrd, 1), full) + 0.0  # no -0.0
    ci = np.quantile(delta, [alpha / 2, 1 - alpha / 2])
    return PairedComparison(p_improvement=float(p), delta_wer=full, delta_ci=ci,
                            ties=float(np.count_nonzero(diff == 0) / n_resamples))


def paired_bootstrap(errors_a: np.ndarray, errors_b: np.ndarray, words: np.ndarray,
                     n_resamples: int = N_RESAMPLES, alpha: float = 0.05,
                     seed: int = 0) -> PairedComparison:
    """Bisani and Ney's paired bootstrap of A against B (see :class:`PairedComparison`).

    Args:
        errors_a, errors_b: (n,) integer word errors per utterance of the two systems,
            utterance ``i`` being the same in both.
        words: (n,) reference words per utterance.
    """
    w = _check_words(words)
    a = _as_matrix(errors_a, w.shape[0], "errors_a")
    b = _as_matrix(errors_b, w.shape[0], "errors_b")
    if a.shape[1] != 1 or b.shape[1] != 1:
        raise ValueError("errors_a and errors_b: one system each, shape (n,)")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    c = resample_counts(w.shape[0], n_resamples, seed)
    return _paired(a[:, 0], b[:, 0], w, c, alpha)


def paired_improvement_probability(errors_a: np.ndarray, errors_b: np.ndarray,
                                   words: np.ndarray, n_resamples: int = N_RESAMPLES,
                                   seed: int = 0) -> float:
    """P(system A has a lower WER than B) by the paired bootstrap, ties counted one half.

    Args:
        errors_a, errors_b: (n,) integer word errors per utterance (same utterances).
        words: (n,) reference words per utterance.
    """
    return paired_bootstrap(errors_a, errors_b, words, n_resamples, seed=seed).p_improvement


def check_same_utterances(name_a: str, a: UtteranceErrors, name_b: str,
                          b: UtteranceErrors) -> None:
    """Raise ValueError unless ``a`` and ``b`` score the same utterances, in the same
    order, with the same reference word counts (a paired comparison needs it)."""
    if a.utts != b.utts:
        only_a = sorted(set(a.utts) - set(b.utts))
        only_b = sorted(set(b.utts) - set(a.utts))
        detail = (f"{len(only_a)} only in {name_a} (e.g. {only_a[:1]}), {len(only_b)} only in "
                  f"{name_b} (e.g. {only_b[:1]})" if only_a or only_b else "different order")
        raise ValueError(f"{name_a} and {name_b} were scored on different utterances: {detail}")
    bad = np.flatnonzero(a.words != b.words)
    if bad.size:
        u = a.utts[int(bad[0])]
        raise ValueError(f"{name_a} and {name_b} have different references for utterance "
                         f"{u!r} ({a.words[bad[0]]} vs {b.words[bad[0]]} words)")


def summarize(per_system: Dict[str, UtteranceErrors], reference: str,
              control: Optional[str] = None, n_resamples: int = N_RESAMPLES,
              alpha: float = 0.05, seed: int = 0,
              pairs: Sequence[Tuple[str, str]] = ()) -> Dict[str, Dict[str, object]]:
    """Bootstrap CI of every system and paired comparisons against ``reference``,
    ``control`` and the chosen ``pairs``, all on the same replicates (one seed for the
    whole set).

    Args:
        per_system: system name -> its per-utterance errors on one test set.
        reference, control: names in ``per_system`` to compare every system with.
        pairs: ``(a, b)`` names: also compare system ``a`` with ``b`` (e.g. a pruned
            model with a same-size baseline).

    Returns:
        name -> ``{"wer", "ci": [low, high], "vs_reference": {...} | None,
        "vs_control": {...} | None, "vs": {b: {...}}}`` (comparisons from
        :meth:`PairedComparison.to_dict`, None against itself or without a control;
        ``vs`` holds this system's ``pairs``, in their order).
    """
    names = list(per_system)
    for required in (reference, control, *(n for pair in pairs for n in pair)):
        if required is not None and required not in per_system:
            raise ValueError(f"{required!r} is not one of the systems {names}")
    first = per_system[names[0]]
    for n in names[1:]:
        check_same_utterances(names[0], first, n, per_system[n])
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    w = _check_words(first.words)
    e = np.stack([per_system[n].errors for n in names], axis=1).astype(np.int64)
    c = resample_counts(w.shape[0], n_resamples, seed)  # shared by every statistic
    cis = np.quantile(_wers(e, w, c), [alpha / 2, 1 - alpha / 2], axis=0).T
    out: Dict[str, Dict[str, object]] = {}
    for k, n in enumerate(names):
        row: Dict[str, object] = {"wer": per_system[n].wer,
                                  "ci": [float(cis[k, 0]), float(cis[k, 1])]}
        for key, other in (("vs_reference", reference), ("vs_control", control)):
            row[key] = None if other is None or other == n else _paired(
                e[:, k], e[:, names.index(other)], w, c, alpha).to_dict()
        row["vs"] = {b: _paired(e[:, k], e[:, names.index(b)], w, c, alpha).to_dict()
                     for a, b in pairs if a == n}
        out[n] = row
    return out
