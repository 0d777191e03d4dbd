"""sclite-compatible word alignment and error counting (the scoring half of WER).

Each hypothesis is aligned to its reference with a weighted Levenshtein alignment using
sclite's default weights (correct 0, substitution 4, insertion 3, deletion 3;
case-insensitive unless asked otherwise); the backtrace gives substitutions / deletions /
insertions per utterance, which :func:`score` sums per speaker and in total. The report
that shows them is :mod:`espnet_prune.data.scoring_report`; files and the command line
are :mod:`espnet_prune.data.scoring`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

# sclite's default alignment weights
COST_SUB = 4
COST_INS = 3
COST_DEL = 3


# --------------------------------------------------------------------------- alignment


@dataclass
class Alignment:
    """Word alignment of one hypothesis against its reference.

    Attributes:
        ops: list of ``(op, ref_word, hyp_word)`` with op in ``C`` (correct),
            ``S`` (substitution), ``D`` (deletion, hyp_word None), ``I`` (insertion,
            ref_word None), in reference order.
    """

    ops: List[Tuple[str, Optional[str], Optional[str]]]

    def count(self, op: str) -> int:
        return sum(1 for o, _, _ in self.ops if o == op)

    @property
    def n_corr(self) -> int:
        return self.count("C")

    @property
    def n_sub(self) -> int:
        return self.count("S")

    @property
    def n_del(self) -> int:
        return self.count("D")

    @property
    def n_ins(self) -> int:
        return self.count("I")

    @property
    def n_ref(self) -> int:
        return self.n_corr + self.n_sub + self.n_del

    @property
    def n_err(self) -> int:
        return self.n_sub + self.n_del + self.n_ins


def align(
    ref: Sequence[str],
    hyp: Sequence[str],
    case_sensitive: bool = False,
    sub_cost: int = COST_SUB,
    ins_cost: int = COST_INS,
    del_cost: int = COST_DEL,
) -> Alignment:
    """Align word sequences ``hyp`` to ``ref`` by minimum weighted edit cost.

    Among alignments of equal cost the backtrace (from the end) prefers a match /
    substitution, then an insertion, then a deletion, which reproduces sclite's choices.

    Returns:
        The :class:`Alignment`; its op counts are the per-utterance C/S/D/I.
    """
    n, m = len(ref), len(hyp)
    r = list(ref) if case_sensitive else [w.upper() for w in ref]
    h = list(hyp) if case_sensitive else [w.upper() for w in hyp]
    # cost[i][j]: best cost of aligning ref[:i] with hyp[:j]
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for j in range(1, m + 1):
        cost[0][j] = j * ins_cost
    for i in range(1, n + 1):
        ci, cim1 = cost[i], cost[i - 1]
        ci[0] = i * del_cost
        ri = r[i - 1]
        for j in range(1, m + 1):
            diag = cim1[j - 1] + (0 if ri == h[j - 1] else sub_cost)
            up = cim1[j] + del_cost
            left = ci[j - 1] + ins_cost
            ci[j] = min(diag, up, left)
    ops: List[Tuple[str, Optional[str], Optional[str]]] = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0:
            same = r[i - 1] == h[j - 1]
            if cost[i][j] == cost[i - 1][j - 1] + (0 if same else sub_cost):
                ops.append(("C" if same else "S", ref[i - 1], hyp[j - 1]))
                i, j = i - 1, j - 1
                continue
        if j > 0 and cost[i][j] == cost[i][j - 1] + ins_cost:
            ops.append(("I", None, hyp[j - 1]))
            j -= 1
            continue
        ops.append(("D", ref[i - 1], None))
        i -= 1
    ops.reverse()
    return Alignment(ops)


# --------------------------------------------------------------------------- totals


def percent1(x: int, d: int) -> float:
    """``100 * x / d`` rounded to one decimal, halves up (as sclite prints it: 56.25 -> 56.3).

    Exact integer arithmetic, so ties are decided the same way on every machine.
    """
    return ((2000 * x + d) // (2 * d)) / 10.0 if d else 0.0


@dataclass
class ErrorCounts:
    """Error counts of a set of utterances (absolute numbers).

    ``n_snt`` sentences, ``n_wrd`` reference words, ``corr``/``sub``/``dele``/``ins``
    word counts, ``n_snt_err`` sentences with at least one error.
    """

    n_snt: int = 0
    n_wrd: int = 0
    corr: int = 0
    sub: int = 0
    dele: int = 0
    ins: int = 0
    n_snt_err: int = 0

    @property
    def err(self) -> int:
        return self.sub + self.dele + self.ins

    def _pct(self, x: int, d: int) -> float:
        return 100.0 * x / d if d else 0.0

    @property
    def wer(self) -> float:
        """Word error rate in percent: (S + D + I) / N * 100."""
        return self._pct(self.err, self.n_wrd)

    @property
    def ser(self) -> float:
        """Sentence error rate in percent."""
        return self._pct(self.n_snt_err, self.n_snt)

    def percentages(self) -> Dict[str, float]:
        """Corr/Sub/Del/Ins/Err over reference words and S.Err over sentences, in %."""
        return {
            "Corr": self._pct(self.corr, self.n_wrd),
            "Sub": self._pct(self.sub, self.n_wrd),
            "Del": self._pct(self.dele, self.n_wrd),
            "Ins": self._pct(self.ins, self.n_wrd),
            "Err": self._pct(self.err, self.n_wrd),
            "S.Err": self._pct(self.n_snt_err, self.n_snt),
        }

    def sclite_percentages(self) -> Dict[str, float]:
        """:meth:`percentages` rounded to one decimal the way sclite prints them."""
        w, n = self.n_wrd, self.n_snt
        return {"Corr": percent1(self.corr, w), "Sub": percent1(self.sub, w),
                "Del": percent1(self.dele, w), "Ins": percent1(self.ins, w),
                "Err": percent1(self.err, w), "S.Err": percent1(self.n_snt_err, n)}

    def add(self, a: Alignment) -> None:
        self.n_snt += 1
        self.n_wrd += a.n_ref
        self.corr += a.n_corr
        self.sub += a.n_sub
        self.dele += a.n_del
        self.ins += a.n_ins
        self.n_snt_err += int(a.n_err > 0)

    def __iadd__(self, other: "ErrorCounts") -> "ErrorCounts":
        for k in ("n_snt", "n_wrd", "corr", "sub", "dele", "ins", "n_snt_err"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        return self


@dataclass
class ScoreResult:
    """Result of scoring a hypothesis set.

    Attributes:
        total: totals over all utterances.
        per_speaker: speaker -> totals (speakers in order of first appearance).
        per_utt: utterance id -> alignment (reference order).
        utt2spk: utterance id -> speaker used for grouping.
    """

    total: ErrorCounts
    per_speaker: Dict[str, ErrorCounts]
    per_utt: Dict[str, Alignment]
    utt2spk: Dict[str, str] = field(default_factory=dict)


def sclite_speaker(utt_id: str) -> str:
    """Speaker sclite derives from a trn id: the part before the first ``-``, else ``_``."""
    for sep in ("-", "_"):
        if sep in utt_id:
            return utt_id.split(sep, 1)[0]
    return utt_id


def score(
    refs: Mapping[str, str],
    hyps: Mapping[str, str],
    utt2spk: Optional[Mapping[str, str]] = None,
    case_sensitive: bool = False,
) -> ScoreResult:
    """Score hypotheses against references (both ``utt -> transcript``).

    Args:
        refs: reference transcripts; their order is the report order.
        hyps: hypotheses; must cover every reference id and name no other id.
        utt2spk: grouping for the per-speaker table; default :func:`sclite_speaker`.
        case_sensitive: compare words case-sensitively (sclite ``-s``).

    Raises:
        ValueError: an utterance is missing from the hypotheses or unknown to the
            references (the message names it).
    """
    missing = [u for u in refs if u not in hyps]
    if missing:
        raise ValueError(f"hypothesis missing for utterance '{missing[0]}'"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = [u for u in hyps if u not in refs]
    if extra:
        raise ValueError(f"hypothesis for utterance '{extra[0]}' has no reference"
                         + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    total = ErrorCounts()
    per_spk: Dict[str, ErrorCounts] = {}
    per_utt: Dict[str, Alignment] = {}
    u2s: Dict[str, str] = {}
    for utt, ref in refs.items():
        a = align(ref.split(), hyps[utt].split(), case_sensitive=case_sensitive)
        spk = utt2spk[utt] if utt2spk is not None else sclite_speaker(utt)
        u2s[utt] = spk
        per_utt[utt] = a
        total.add(a)
        per_spk.setdefault(spk, ErrorCounts()).add(a)
    return ScoreResult(total=total, per_speaker=per_spk, per_utt=per_utt, utt2spk=u2s)


def wer(refs: Mapping[str, str], hyps: Mapping[str, str]) -> float:
    """Word error rate in percent over all utterances (see :func:`score`)."""
    return score(refs, hyps).total.wer
