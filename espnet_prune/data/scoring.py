"""Word error rate scoring, sclite compatible: transcript files, sclite, command line.

The pure-Python scorer is the default and always available: it aligns each hypothesis
to its reference as sclite does (:mod:`espnet_prune.data.scoring_align`: sclite's
default weights, correct 0, substitution 4, insertion 3, deletion 3; case-insensitive
unless asked otherwise) and writes a ``result.txt`` laid out like
``sclite -i rm -o all stdout`` (:mod:`espnet_prune.data.scoring_report`: the speaker
summary table in percentages, whose ``| Sum/Avg|`` line ESPnet's ``show_asr_result.sh``
greps, the same table in counts, and a per-utterance alignment dump). This module reads
and writes the transcript files, runs sclite, and re-exports the names of both modules.

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
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

from espnet_prune.data.scoring_align import (
    COST_DEL,
    COST_INS,
    COST_SUB,
    Alignment,
    ErrorCounts,
    ScoreResult,
    align,
    sclite_speaker,
    score,
    wer,
)
from espnet_prune.data.scoring_report import (
    format_result,
    parse_sum_avg,
    parse_sum_counts,
    write_result,
)
from espnet_prune.fileio import atomic_write_text

__all__ = [
    "COST_DEL", "COST_INS", "COST_SUB", "Alignment", "ErrorCounts", "ScoreResult", "align",
    "sclite_speaker", "score", "wer",
    "format_result", "parse_sum_avg", "parse_sum_counts", "write_result",
    "SCLITE_CANDIDATES", "read_trn", "write_trn", "read_text", "find_sclite", "run_sclite",
    "score_files", "get_parser", "main",
]

PathLike = Union[str, "os.PathLike[str]"]

SCLITE_CANDIDATES = ("sclite", "/usr/lib/sctk/bin/sclite", "/usr/local/bin/sclite")


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
    atomic_write_text(path, "".join(lines))


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
        atomic_write_text(out / "result.txt", report)
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
