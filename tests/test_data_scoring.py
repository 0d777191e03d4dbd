"""WER scoring: hand-worked alignments, sclite's report layout, agreement with sclite.

sclite's byte-exact reports for the inputs below are committed in ``tests/data/sclite``
(``python tests/test_data_scoring.py`` rewrites them with the installed sclite), so the
reports are compared on every machine; with sclite installed they are also compared live.
"""

from __future__ import annotations

import gzip
import random
import re
import sys
import tempfile
from pathlib import Path

import pytest

from espnet_prune.data import scoring as S

GOLDEN = Path(__file__).parent / "data" / "sclite"
SEEDS = (0, 1)
needs_sclite = pytest.mark.skipif(S.find_sclite() is None, reason="sclite (sctk) not installed")

# Hand-worked example (4 utterances, 2 speakers):
#  spk1-utt1  THE CAT SAT ON THE MAT  / THE CAT SAT MAT   -> C4 D2           (ON, THE deleted)
#  spk1-utt2  HELLO WORLD             / HELLO WORLD       -> C2
#  spk2-utt3  A B C D E               / A X C D E F       -> C4 S1 I1        (B->X, +F)
#  spk2-utt4  TURN ON THE LIGHT       / (empty)           -> D4
# totals: N=17 words, C=10 S=1 D=6 I=1, errors 8 -> WER 8/17 = 47.1 %, 3 of 4 sentences wrong
REFS = {
    "spk1-utt1": "THE CAT SAT ON THE MAT",
    "spk1-utt2": "HELLO WORLD",
    "spk2-utt3": "A B C D E",
    "spk2-utt4": "TURN ON THE LIGHT",
}
HYPS = {
    "spk1-utt1": "THE CAT SAT MAT",
    "spk1-utt2": "HELLO WORLD",
    "spk2-utt3": "A X C D E F",
    "spk2-utt4": "",
}


def golden_hand() -> str:
    """sclite's whole report for REFS / HYPS (``sclite -i rm -o all stdout``; Debian's
    sctk 2.4.10, sclite 2.10); its first table holds the percentages worked out above."""
    return (GOLDEN / "hand.txt").read_text()


def golden_random(seed: int) -> str:
    """sclite's whole report for ``_random_set(seed)`` (gzip: 37 kB of text each)."""
    with gzip.open(GOLDEN / f"random{seed}.txt.gz", "rt") as f:
        return f.read()


def counts(a: S.Alignment):
    return (a.n_corr, a.n_sub, a.n_del, a.n_ins)


def test_hand_worked_alignments() -> None:
    assert counts(S.align("THE CAT SAT ON THE MAT".split(), "THE CAT SAT MAT".split())) == (4, 0, 2, 0)
    a = S.align("A B C D E".split(), "A X C D E F".split())
    assert counts(a) == (4, 1, 0, 1)
    assert a.ops[1] == ("S", "B", "X") and a.ops[-1] == ("I", None, "F")
    assert counts(S.align("TURN ON THE LIGHT".split(), [])) == (0, 0, 4, 0)
    assert counts(S.align([], "UH UM".split())) == (0, 0, 0, 2)
    # sclite weights (sub 4 > ins 3 + ... ): "A B" -> "B C" is D + C + I, not two substitutions
    assert [o for o, _, _ in S.align(["A", "B"], ["B", "C"]).ops] == ["D", "C", "I"]
    # case-insensitive by default, like sclite
    assert counts(S.align(["Hello"], ["HELLO"])) == (1, 0, 0, 0)
    assert counts(S.align(["Hello"], ["HELLO"], case_sensitive=True)) == (0, 1, 0, 0)


def test_totals_and_report_layout() -> None:
    res = S.score(REFS, HYPS)
    t = res.total
    assert (t.n_snt, t.n_wrd, t.corr, t.sub, t.dele, t.ins, t.err, t.n_snt_err) == (4, 17, 10, 1, 6, 1, 8, 3)
    assert t.wer == pytest.approx(100 * 8 / 17)
    assert list(res.per_speaker) == ["spk1", "spk2"]
    report = S.format_result(res)
    assert report == golden_hand()  # sclite's report, byte for byte
    # ESPnet's show_asr_result.sh: grep Avg | drop "Sum/Avg" | tr '|' ' ' | squeeze to '|'
    avg_lines = [ln for ln in report.splitlines() if "Avg" in ln]
    assert len(avg_lines) == 1
    row = re.sub(" +", "|", avg_lines[0].replace("Sum/Avg", "").replace("|", " ").strip())
    assert row == "4|17|58.8|5.9|35.3|5.9|47.1|75.0"
    assert S.parse_sum_avg(report) == {"Snt": 4, "Wrd": 17, "Corr": 58.8, "Sub": 5.9,
                                       "Del": 35.3, "Ins": 5.9, "Err": 47.1, "S.Err": 75.0}
    assert S.parse_sum_counts(report) == t


def test_rounding_half_up_like_sclite() -> None:
    # 9/16 = 56.25 % and 1/16 = 6.25 %: sclite prints 56.3 and 6.3 (not banker's 56.2 / 6.2)
    refs = {f"s-{i}": "A B C D" for i in range(4)}
    hyps = {"s-0": "A B C D", "s-1": "A B X Y", "s-2": "A X Y D", "s-3": "A"}
    res = S.score(refs, hyps)
    assert (res.total.corr, res.total.n_wrd) == (9, 16)
    assert S.parse_sum_avg(S.format_result(res))["Corr"] == 56.3


def test_missing_hypothesis_is_named() -> None:
    with pytest.raises(ValueError, match="hypothesis missing for utterance 'spk2-utt4'"):
        S.score(REFS, {k: v for k, v in HYPS.items() if k != "spk2-utt4"})


def test_trn_roundtrip_and_score_files(tmp_path: Path) -> None:
    ref_text = tmp_path / "ref_text"
    hyp_text = tmp_path / "hyp_text"
    utt2spk = tmp_path / "utt2spk"
    # Kaldi text files with utterance ids that are not speaker-prefixed
    ref_text.write_text("".join(f"{u.split('-')[1]} {t}\n" for u, t in REFS.items()))
    hyp_text.write_text("".join(f"{u.split('-')[1]} {t}\n" for u, t in HYPS.items()))
    utt2spk.write_text("".join(f"{u.split('-')[1]} {u.split('-')[0]}\n" for u in REFS))
    out = tmp_path / "score_wer"
    c = S.score_files(ref_text, hyp_text, out, utt2spk=utt2spk, use_sclite="no")
    assert (c.n_wrd, c.err) == (17, 8)
    assert S.read_trn(out / "ref.trn")["spk1-utt1"] == "THE CAT SAT ON THE MAT"
    assert S.read_trn(out / "hyp.trn")["spk2-utt4"] == ""
    assert (out / "result.txt").read_text() == golden_hand()
    assert S.main(["--ref", str(ref_text), "--hyp", str(hyp_text), "--out_dir", str(out),
                   "--utt2spk", str(utt2spk)]) == 0


def _random_set(seed: int, n: int = 300):
    rng = random.Random(seed)
    vocab = ["A", "B", "C", "D"]  # tiny vocabulary: many equal-cost alignments
    refs, hyps = {}, {}
    for k in range(n):
        spk = rng.choice(["s1", "spkr2", "x3", "long_speaker_name"])
        u = f"{spk}-u{k:04d}"
        refs[u] = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 9)))
        hyps[u] = " ".join(rng.choice(vocab + ["e"]) for _ in range(rng.randint(0, 10)))
    return refs, hyps


def _utt_counts(report: str) -> dict:
    """Per-utterance ``C S D I`` from a report's alignment dump."""
    return dict(re.findall(r"id: \((\S+)\)\nScores: \(#C #S #D #I\) (\d+ \d+ \d+ \d+)", report))


@pytest.mark.parametrize("seed", SEEDS)
def test_matches_sclite_golden_report(seed: int) -> None:
    refs, hyps = _random_set(seed)
    golden = golden_random(seed)
    ours = S.score(refs, hyps)
    assert S.parse_sum_counts(golden) == ours.total
    # per-utterance C/S/D/I as sclite reports them in its alignment dump
    assert _utt_counts(golden) == {u: " ".join(map(str, counts(a))) for u, a in ours.per_utt.items()}
    # the whole report, summary tables and alignment dump, is sclite's byte for byte
    assert S.format_result(ours) == golden


def _run_sclite(refs, hyps, work: Path) -> str:
    S.write_trn(work / "ref.trn", refs)
    S.write_trn(work / "hyp.trn", hyps)
    report, totals, pct = S.run_sclite("ref.trn", "hyp.trn", cwd=work)
    assert totals == S.parse_sum_counts(report) and pct == S.parse_sum_avg(report)
    return report


@needs_sclite
@pytest.mark.parametrize("seed", SEEDS)
def test_agrees_with_sclite(tmp_path: Path, seed: int) -> None:
    refs, hyps = _random_set(seed)
    report = _run_sclite(refs, hyps, tmp_path)
    assert report == golden_random(seed)  # the committed report is this sclite's
    assert S.format_result(S.score(refs, hyps)) == report


@needs_sclite
def test_score_files_with_sclite(tmp_path: Path) -> None:
    ref, hyp = tmp_path / "ref.txt", tmp_path / "hyp.txt"
    ref.write_text("".join(f"{u} {t}\n" for u, t in REFS.items()))
    hyp.write_text("".join(f"{u} {t}\n" for u, t in HYPS.items()))
    out = tmp_path / "out"
    c = S.score_files(ref, hyp, out, use_sclite="yes")
    assert (c.corr, c.sub, c.dele, c.ins) == (10, 1, 6, 1)
    # result.txt is sclite's (it names hyp.trn by the path it was given), ours is beside it;
    # without utt2spk a trn id is "<speaker>-<utt>", the speaker being the utt id up to its first "-"
    theirs = (out / "result.txt").read_text()
    assert f"System name:   {out / 'hyp.trn'}" in theirs
    assert S.parse_sum_counts(theirs) == S.parse_sum_counts(golden_hand())
    ids = {u: f"{u.split('-')[0]}-{u}" for u in REFS}
    ours = S.score({ids[u]: t for u, t in REFS.items()}, {ids[u]: t for u, t in HYPS.items()})
    assert (out / "result.py.txt").read_text() == S.format_result(ours)
    assert _run_sclite(REFS, HYPS, tmp_path) == golden_hand()  # the committed report is this sclite's


def write_golden() -> None:
    """Rewrite ``tests/data/sclite`` with the installed sclite's reports."""
    GOLDEN.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        (GOLDEN / "hand.txt").write_text(_run_sclite(REFS, HYPS, Path(d)))
        for seed in SEEDS:
            report = _run_sclite(*_random_set(seed), Path(d))
            with open(GOLDEN / f"random{seed}.txt.gz", "wb") as raw:
                with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
                    f.write(report.encode())


if __name__ == "__main__":
    if S.find_sclite() is None:
        sys.exit("sclite not found: apt-get install sctk")
    write_golden()
