"""Word error rate scoring, sclite compatible.

The pure-Python scorer is the default and always available. It aligns each hypothesis
to its reference with a weighted Levenshtein alignment using sclite's default weights
(correct 0, substitution 4, insertion 3, deletion 3; case-insensitive unless asked
otherwise), backtraces substitutions / deletions / insertions per utterance, and writes a
``result.txt`` laid out like ``sclite -i rm -o all stdout``: the speaker summary table in
percentages (whose ``| Sum/Avg|`` line ESPnet's ``show_asr_result.sh`` greps), the same
table in counts, and a per-utterance alignment dump.

If ``sclite`` (Debian/Ubuntu package ``sctk``; binary in ``/usr/lib/sctk/bin``) is found,
:func:`run_sclite` runs it on ESPnet ``trn`` files and parses its totals so the two can be
compared.

The ``trn`` format is one utterance per line, ``WORD WORD ... (uttid)``; ESPnet writes the
id as ``spk-uttid`` and sclite takes the speaker to be the part before the first ``-``
(or, if there is none, before the first ``_``).

Command line::

    python -m espnet_prune.data.scoring --ref data/test/text --hyp exp/decode/test/text \\
        --out_dir exp/decode/test/score_wer [--utt2spk data/test/utt2spk] [--sclite auto]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]

# sclite's default alignment weights
COST_SUB = 4
COST_INS = 3
COST_DEL = 3

SCLITE_CANDIDATES = ("sclite", "/usr/lib/sctk/bin/sclite", "/usr/local/bin/sclite")


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


def _pct1(x: int, d: int) -> float:
    """``100 * x / d`` rounded to one decimal, halves up (as sclite prints it: 56.25 -> 56.3).

    Exact integer arithmetic, so ties are decided the same way on every machine.
    """
    return ((2000 * x + d) // (2 * d)) / 10.0 if d else 0.0


def _round1(v: float) -> float:
    """Round a float to one decimal, halves up (for sclite's mean / S.D. / median rows)."""
    return math.floor(v * 10.0 + 0.5 + 1e-9) / 10.0


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
        return {"Corr": _pct1(self.corr, w), "Sub": _pct1(self.sub, w),
                "Del": _pct1(self.dele, w), "Ins": _pct1(self.ins, w),
                "Err": _pct1(self.err, w), "S.Err": _pct1(self.n_snt_err, n)}

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


# --------------------------------------------------------------------------- file formats

_TRN_RE = re.compile(r"^(.*?)\s*\(([^()\s]+)\)\s*$")


def read_trn(path: PathLike) -> Dict[str, str]:
    """Read a trn file (``WORDS (uttid)`` per line) into ``uttid -> text`` (file order).

    Raises:
        ValueError: a line has no trailing ``(id)`` or an id repeats (names file:line).
    """
    out: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            mt = _TRN_RE.match(line.rstrip("\n"))
            if not mt:
                raise ValueError(f"{path}:{lineno}: no '(utterance-id)' at the end of the line")
            text, utt = " ".join(mt.group(1).split()), mt.group(2)
            if utt in out:
                raise ValueError(f"{path}:{lineno}: duplicate utterance id '{utt}'")
            out[utt] = text
    return out


def write_trn(path: PathLike, texts: Mapping[str, str],
              utt2spk: Optional[Mapping[str, str]] = None) -> None:
    """Write ``uttid -> text`` as trn; with ``utt2spk`` the id is ``spk-uttid`` (ESPnet)."""
    lines = []
    for utt, text in texts.items():
        uid = f"{utt2spk[utt]}-{utt}" if utt2spk is not None else utt
        lines.append(f"{' '.join(text.split())}\t({uid})\n")
    _atomic_write(path, "".join(lines))


def read_text(path: PathLike) -> Dict[str, str]:
    """Read a Kaldi ``text`` file (``uttid words...``; empty transcripts allowed)."""
    out: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            if parts[0] in out:
                raise ValueError(f"{path}:{lineno}: duplicate utterance id '{parts[0]}'")
            out[parts[0]] = " ".join(parts[1].split()) if len(parts) > 1 else ""
    return out


def _atomic_write(path: PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- report


def _table(
    title: str,
    rows: List[Tuple[str, ErrorCounts]],
    total: ErrorCounts,
    percent: bool,
) -> List[str]:
    """One sclite-style speaker summary table (percentages or counts)."""
    names = [n for n, _ in rows]
    maxlen = max([len(n) for n in names] + [0])
    inner = max(8 if percent else 6, maxlen + 2)
    width = inner + 58
    pad = " " * max(0, (80 - width) // 2)
    # speakers without reference words: sclite prints counts marked '*' instead of
    # percentages and leaves them out of the word statistics (marked '+')
    no_ref = percent and any(c.n_wrd == 0 for _, c in rows)

    def line(s: str) -> str:
        return pad + s

    def center(label: str) -> str:
        lp = (inner - len(label)) // 2
        return " " * lp + label + " " * (inner - len(label) - lp)

    def nums(c: ErrorCounts) -> str:
        if percent and c.n_wrd == 0:
            return "|%5d %6d |%5d* %5d* %5d* %5d* %5d*%6.1f |" % (
                c.n_snt, c.n_wrd, c.corr, c.sub, c.dele, c.ins, c.err,
                _pct1(c.n_snt_err, c.n_snt))
        if percent:
            p = c.sclite_percentages()
            return "|%5d %6d |%5.1f %6.1f %6.1f %6.1f %6.1f %6.1f |" % (
                c.n_snt, c.n_wrd, p["Corr"], p["Sub"], p["Del"], p["Ins"], p["Err"], p["S.Err"])
        return "|%5d %6d |%5d %6d %6d %6d %6d %6d |" % (
            c.n_snt, c.n_wrd, c.corr, c.sub, c.dele, c.ins, c.err, c.n_snt_err)

    def values(c: ErrorCounts) -> List[float]:
        if percent:
            p = c.percentages()
            return [c.n_snt, c.n_wrd, p["Corr"], p["Sub"], p["Del"], p["Ins"], p["Err"],
                    p["S.Err"]]
        return [c.n_snt, c.n_wrd, c.corr, c.sub, c.dele, c.ins, c.err, c.n_snt_err]

    def stat_row(label: str, fn) -> str:
        all_vals = [values(c) for _, c in rows]
        word_vals = [values(c) for _, c in rows if c.n_wrd > 0] if no_ref else all_vals
        cols = []
        for k in range(8):
            src = word_vals if 2 <= k <= 6 else all_vals
            cols.append(_round1(fn([v[k] for v in src])) if src else 0.0)
        if no_ref:
            fmt = "|%5.1f %6.1f |%5.1f+ %5.1f+ %5.1f+ %5.1f+ %5.1f+%6.1f |"
        else:
            fmt = "|%5.1f %6.1f |%5.1f %6.1f %6.1f %6.1f %6.1f %6.1f |"
        return "|" + center(label) + fmt % tuple(cols)

    def sd(xs: List[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else 0.0

    sep = "|" + "-" * inner + "+" + "-" * 13 + "+" + "-" * 41 + "|"
    dbl = "|" + "=" * (width - 2) + "|"
    t = title if len(title) <= width - 2 else os.path.basename(title)[: width - 2]
    lp = (width - 2 - len(t)) // 2
    out = [
        "",
        "",
        "",
        " " * 21 + "SYSTEM SUMMARY PERCENTAGES by SPEAKER" + " " * 22,
        "",
        line("," + "-" * (width - 2) + "."),
        line("|" + " " * lp + t + " " * (width - 2 - len(t) - lp) + "|"),
        line("|" + "-" * (width - 2) + "|"),
        line("|" + " SPKR".ljust(inner) + "| # Snt # Wrd | Corr    Sub    Del    Ins    Err  S.Err |"),
        line(sep),
    ]
    for k, (name, c) in enumerate(rows):
        out.append(line("|" + (" " + name).ljust(inner) + nums(c)))
        out.append(line(sep if k < len(rows) - 1 else dbl))
    out.append(line("|" + (" Sum/Avg" if percent else " Sum").ljust(inner) + nums(total)))
    out.append(line(dbl))
    out.append(line(stat_row("Mean", statistics.mean)))
    out.append(line(stat_row("S.D.", sd)))
    out.append(line(stat_row("Median", statistics.median)))
    out.append(line("`" + "-" * (width - 2) + "'"))
    if no_ref:
        out += [
            "",
            "* No Reference words for this/these speaker(s).  Word counts supplied",
            "  rather than percents.",
            "# No Reference words for this/these speaker(s).  NCE not computable.",
            "+ Speaker(s) with no reference data is ignored",
        ]
    return out


def format_result(result: ScoreResult, hyp_name: str = "hyp.trn") -> str:
    """Render ``result`` as sclite's ``-o all`` report (summary %, summary counts, dump).

    The percentages table holds the single ``| Sum/Avg|`` line that ESPnet's
    ``show_asr_result.sh`` turns into a RESULTS.md row. The text is byte-identical to
    sclite 2.4.10's except: a ``hyp_name`` wider than the table is shortened to its base
    name (sclite widens the table instead), and the Mean/S.D./Median rows when two or more
    speakers have no reference words.
    """
    rows = list(result.per_speaker.items())
    lines: List[str] = []
    lines += _table(hyp_name, rows, result.total, percent=True)
    lines += _table(hyp_name, rows, result.total, percent=False)
    lines += ["", "", "\t\tDUMP OF SYSTEM ALIGNMENT STRUCTURE", "", f"System name:   {hyp_name}",
              "", "Speakers: "]
    spk_list = list(result.per_speaker)
    for k, s in enumerate(spk_list):
        lines.append(f"{k:5d}:  {s}")
    lines.append("")
    for k, s in enumerate(spk_list):
        utts = [u for u, sp in result.utt2spk.items() if sp == s]
        lines.append(f"Speaker sentences {k:3d}:  {s}   #utts: {len(utts)}")
        for u in utts:
            a = result.per_utt[u]
            r_toks, h_toks, e_toks = [], [], []
            for op, rw, hw in a.ops:
                if op == "C":
                    rs, hs = rw.lower(), hw.lower()
                elif op == "S":
                    rs, hs = rw.upper(), hw.upper()
                elif op == "D":
                    rs, hs = rw.upper(), "*" * len(rw)
                else:
                    rs, hs = "*" * len(hw), hw.upper()
                w = max(len(rs), len(hs))
                r_toks.append(rs.ljust(w))
                h_toks.append(hs.ljust(w))
                e_toks.append(("" if op == "C" else op).ljust(w))
            lines += [f"id: ({u})",
                      f"Scores: (#C #S #D #I) {a.n_corr} {a.n_sub} {a.n_del} {a.n_ins}"]
            if a.ops:
                lines += ["REF:  " + " ".join(r_toks) + " ",
                          "HYP:  " + " ".join(h_toks) + " ",
                          "Eval: " + " ".join(e_toks) + " "]
            lines.append("")
    lines.append("")
    return "\n".join(lines) + "\n"


def write_result(path: PathLike, result: ScoreResult, hyp_name: str = "hyp.trn") -> None:
    """Write :func:`format_result` to ``path`` atomically."""
    _atomic_write(path, format_result(result, hyp_name))


_SUM_AVG_RE = re.compile(
    r"\|\s*Sum/Avg\s*\|\s*(\d+)\s+(\d+)\s*\|\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+"
    r"([\d.]+)\s+([\d.]+)\s*\|")
_SUM_RE = re.compile(
    r"\|\s*Sum\s*\|\s*(\d+)\s+(\d+)\s*\|\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*\|")


def parse_sum_avg(report: str) -> Dict[str, float]:
    """Parse the ``Sum/Avg`` line of a sclite/our report.

    Returns:
        dict with ``Snt``, ``Wrd`` (ints) and ``Corr``, ``Sub``, ``Del``, ``Ins``, ``Err``,
        ``S.Err`` (percent, one decimal).
    """
    mt = _SUM_AVG_RE.search(report)
    if not mt:
        raise ValueError("no 'Sum/Avg' line in the report")
    g = mt.groups()
    keys = ["Corr", "Sub", "Del", "Ins", "Err", "S.Err"]
    out: Dict[str, float] = {"Snt": int(g[0]), "Wrd": int(g[1])}
    out.update({k: float(v) for k, v in zip(keys, g[2:])})
    return out


def parse_sum_counts(report: str) -> ErrorCounts:
    """Parse the absolute ``| Sum |`` line (sclite's ``rsum`` table) into counts."""
    mt = _SUM_RE.search(report)
    if not mt:
        raise ValueError("no absolute 'Sum' line in the report")
    s, w, c, sub, d, i, _e, se = (int(x) for x in mt.groups())
    return ErrorCounts(n_snt=s, n_wrd=w, corr=c, sub=sub, dele=d, ins=i, n_snt_err=se)


# --------------------------------------------------------------------------- sclite


def find_sclite() -> Optional[str]:
    """Path of a runnable sclite binary (PATH, then Debian's /usr/lib/sctk/bin), or None."""
    for cand in SCLITE_CANDIDATES:
        p = shutil.which(cand) if os.sep not in cand else (cand if os.access(cand, os.X_OK) else None)
        if p:
            return p
    return None


def run_sclite(ref_trn: PathLike, hyp_trn: PathLike, sclite: Optional[str] = None,
               case_sensitive: bool = False, cwd: Optional[PathLike] = None,
               ) -> Tuple[str, ErrorCounts, Dict[str, float]]:
    """Run ``sclite -r ref trn -h hyp trn -i rm -o all stdout`` (in ``cwd`` if given).

    Returns:
        ``(report_text, absolute_totals, sum_avg_percentages)``.

    Raises:
        FileNotFoundError: no sclite binary. RuntimeError: sclite failed.
    """
    exe = sclite or find_sclite()
    if exe is None:
        raise FileNotFoundError("sclite not found (install the 'sctk' package)")
    cmd = [exe, "-r", str(ref_trn), "trn", "-h", str(hyp_trn), "trn", "-i", "rm"]
    if case_sensitive:
        cmd.append("-s")
    cmd += ["-o", "all", "stdout"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"sclite failed ({proc.returncode}): {proc.stderr.strip()[:2000]}")
    report = proc.stdout
    return report, parse_sum_counts(report), parse_sum_avg(report)


def score_files(
    ref: PathLike,
    hyp: PathLike,
    out_dir: PathLike,
    utt2spk: Optional[PathLike] = None,
    fmt: str = "text",
    use_sclite: str = "no",
    case_sensitive: bool = False,
) -> ErrorCounts:
    """Score two transcript files and write ``ref.trn``, ``hyp.trn``, ``result.txt``.

    Args:
        ref, hyp: Kaldi ``text`` files (``fmt="text"``) or trn files (``fmt="trn"``).
        out_dir: output directory (ESPnet's ``score_wer``).
        utt2spk: optional Kaldi utt2spk used to write ``(spk-utt)`` ids as ESPnet does.
        use_sclite: ``"no"`` (pure Python), ``"yes"`` (sclite must exist), ``"auto"``.
            With sclite, ``result.txt`` is sclite's own report; the pure-Python report is
            always written as ``result.py.txt`` too.

    Returns:
        Absolute totals (from sclite when it produced ``result.txt``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "text":
        refs, hyps = read_text(ref), read_text(hyp)
        u2s = None
        if utt2spk is not None:
            u2s = read_text(utt2spk)
            lost = [u for u in refs if u not in u2s]
            if lost:
                raise ValueError(f"{utt2spk}: no speaker for utterance '{lost[0]}'")
        else:
            u2s = {u: sclite_speaker(u) for u in refs}
        # sclite sees ids spk-utt and groups by spk; keep our grouping identical
        refs_ids = {f"{u2s[u]}-{u}": t for u, t in refs.items()}
        missing = [u for u in refs if u not in hyps]
        if missing:
            raise ValueError(f"{hyp}: hypothesis missing for utterance '{missing[0]}'")
        extra = [u for u in hyps if u not in refs]
        if extra:
            raise ValueError(f"{hyp}: utterance '{extra[0]}' is not in the reference {ref}")
        hyps_ids = {f"{u2s[u]}-{u}": hyps[u] for u in refs}
        write_trn(out / "ref.trn", refs_ids)
        write_trn(out / "hyp.trn", hyps_ids)
        result = score(refs_ids, hyps_ids, case_sensitive=case_sensitive)
    elif fmt == "trn":
        refs_ids, hyps_ids = read_trn(ref), read_trn(hyp)
        if Path(ref).resolve() != (out / "ref.trn").resolve():
            write_trn(out / "ref.trn", refs_ids)
        if Path(hyp).resolve() != (out / "hyp.trn").resolve():
            write_trn(out / "hyp.trn", hyps_ids)
        result = score(refs_ids, hyps_ids, case_sensitive=case_sensitive)
    else:
        raise ValueError(f"unknown format {fmt!r} (text or trn)")
    write_result(out / "result.py.txt", result)
    exe = find_sclite() if use_sclite in ("auto", "yes") else None
    if use_sclite == "yes" and exe is None:
        raise FileNotFoundError("--sclite yes but sclite was not found (install 'sctk')")
    if exe is not None:
        report, counts, _ = run_sclite(out / "ref.trn", out / "hyp.trn", exe, case_sensitive)
        _atomic_write(out / "result.txt", report)
        return counts
    write_result(out / "result.txt", result)
    return result.total


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="sclite-compatible WER scoring")
    p.add_argument("--ref", required=True, help="reference Kaldi text (or trn)")
    p.add_argument("--hyp", required=True, help="hypothesis Kaldi text (or trn)")
    p.add_argument("--out_dir", required=True, help="writes ref.trn, hyp.trn, result.txt")
    p.add_argument("--utt2spk", default=None, help="Kaldi utt2spk for (spk-utt) trn ids")
    p.add_argument("--format", default="text", choices=["text", "trn"])
    p.add_argument("--sclite", default="no", choices=["no", "auto", "yes"],
                   help="also run sclite and let it write result.txt")
    p.add_argument("--case_sensitive", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    c = score_files(args.ref, args.hyp, args.out_dir, utt2spk=args.utt2spk, fmt=args.format,
                    use_sclite=args.sclite, case_sensitive=args.case_sensitive)
    p = c.sclite_percentages()
    print(f"{args.out_dir}: #Snt {c.n_snt} #Wrd {c.n_wrd} Corr {p['Corr']:.1f} Sub {p['Sub']:.1f}"
          f" Del {p['Del']:.1f} Ins {p['Ins']:.1f} Err {p['Err']:.1f} S.Err {p['S.Err']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
