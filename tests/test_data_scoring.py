"""WER scoring: hand-worked alignments, sclite's report layout, agreement with sclite."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from espnet_prune.data import scoring as S

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

# The percentage table sclite 2.4.10 prints for this example (sclite -i rm -o all stdout).
SCLITE_SUMMARY = """\



                     SYSTEM SUMMARY PERCENTAGES by SPEAKER                      

       ,----------------------------------------------------------------.
       |                            hyp.trn                             |
       |----------------------------------------------------------------|
       | SPKR   | # Snt # Wrd | Corr    Sub    Del    Ins    Err  S.Err |
       |--------+-------------+-----------------------------------------|
       | spk1   |    2      8 | 75.0    0.0   25.0    0.0   25.0   50.0 |
       |--------+-------------+-----------------------------------------|
       | spk2   |    2      9 | 44.4   11.1   44.4   11.1   66.7  100.0 |
       |================================================================|
       | Sum/Avg|    4     17 | 58.8    5.9   35.3    5.9   47.1   75.0 |
       |================================================================|
       |  Mean  |  2.0    8.5 | 59.7    5.6   34.7    5.6   45.8   75.0 |
       |  S.D.  |  0.0    0.7 | 21.6    7.9   13.7    7.9   29.5   35.4 |
       | Median |  2.0    8.5 | 59.7    5.6   34.7    5.6   45.8   75.0 |
       `----------------------------------------------------------------'
"""


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
    assert report.startswith(SCLITE_SUMMARY)
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
    assert (out / "result.txt").read_text().startswith(SCLITE_SUMMARY)
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


@pytest.mark.skipif(S.find_sclite() is None, reason="sclite (sctk) not installed")
@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_sclite(tmp_path: Path, seed: int) -> None:
    refs, hyps = _random_set(seed)
    S.write_trn(tmp_path / "ref.trn", refs)
    S.write_trn(tmp_path / "hyp.trn", hyps)
    report, totals, pct = S.run_sclite("ref.trn", "hyp.trn", cwd=tmp_path)
    ours = S.score(refs, hyps)
    assert totals == ours.total
    ours_report = S.format_result(ours)
    assert S.parse_sum_avg(ours_report) == pct
    # per-utterance C/S/D/I as sclite reports them in its alignment dump
    theirs = dict(re.findall(r"id: \((\S+)\)\nScores: \(#C #S #D #I\) (\d+ \d+ \d+ \d+)", report))
    assert theirs == {u: " ".join(map(str, counts(a))) for u, a in ours.per_utt.items()}
    # the whole report, summary tables and alignment dump, is sclite's byte for byte
    assert ours_report == report


@pytest.mark.skipif(S.find_sclite() is None, reason="sclite (sctk) not installed")
def test_score_files_with_sclite(tmp_path: Path) -> None:
    ref, hyp = tmp_path / "ref.txt", tmp_path / "hyp.txt"
    ref.write_text("".join(f"{u} {t}\n" for u, t in REFS.items()))
    hyp.write_text("".join(f"{u} {t}\n" for u, t in HYPS.items()))
    c = S.score_files(ref, hyp, tmp_path / "out", use_sclite="yes")
    assert (c.corr, c.sub, c.dele, c.ins) == (10, 1, 6, 1)
    assert "Sum/Avg" in (tmp_path / "out" / "result.txt").read_text()
