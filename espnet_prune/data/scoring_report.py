"""sclite-layout report of a scored set: ``result.txt`` as ``sclite -i rm -o all stdout``.

:func:`format_result` lays out a :class:`~espnet_prune.data.scoring_align.ScoreResult`
as sclite does: the speaker summary table in percentages (whose ``| Sum/Avg|`` line
ESPnet's ``show_asr_result.sh`` greps), the same table in counts, and a per-utterance
alignment dump. :func:`parse_sum_avg` / :func:`parse_sum_counts` read the totals back
from such a report (ours or sclite's own).
"""

from __future__ import annotations

import math
import os
import re
import statistics
from typing import Dict, List, Tuple, Union

from espnet_prune.data.scoring_align import ErrorCounts, ScoreResult, percent1
from espnet_prune.fileio import atomic_write_text

PathLike = Union[str, "os.PathLike[str]"]


def _round1(v: float) -> float:
    """Round a float to one decimal, halves up (for sclite's mean / S.D. / median rows)."""
    return math.floor(v * 10.0 + 0.5 + 1e-9) / 10.0


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
                percent1(c.n_snt_err, c.n_snt))
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
    atomic_write_text(path, format_result(result, hyp_name))


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
