"""RESULTS.md intervals, paired bootstrap and plots (espnet_prune.recipe.evidence) on the
two tiny models of test_report, whose transcripts have hand-counted errors."""

import json
import os

import pytest

from espnet_prune.recipe import evidence, plots, report
from test_report import _argv, _summary_rows, setup  # noqa: F401 - setup: the fixture

# Per-utterance errors of test_report's HYPS (hand-counted):
#   dev_clean (4 + 4 words): baseline [0, 1] (1 sub), pruned [1, 1] (1 del, 1 ins)
#   test (3 words):          baseline [1] (1 del),    pruned [2] (2 sub)
UTT_ERRORS = {"baseline": {"dev_clean": [0, 1], "test": [1]},
              "pruned": {"dev_clean": [1, 1], "test": [2]}}


def _log(path):
    lines = []
    for e in (1, 2):
        for a in (1, 11):
            lines.append(f"[h] t (trainer:811) INFO: {e}epoch:train:{a}-{a + 9}batch: "
                         f"expected_sparsity={0.1 * e}, target_sparsity={0.1 * e}, "
                         f"lambda1={-e}, lambda2={e}\n")
        lines.append(f"[h] t (trainer:394) INFO: {e}epoch results: [train] loss=1.0, "
                     f"total_count={25 * e}, [valid] loss=2.0, total_count=3\n")
    path.write_text("".join(lines))
    return path


def test_intervals_paired_bootstrap_and_plots(setup, tmp_path):
    out = tmp_path / "out"
    log = _log(tmp_path / "train.log")
    rep = report.main(_argv(setup, out, "--latency_utts", "0", "--control", "pruned",
                            "--pair", "pruned:baseline",
                            "--bootstrap_samples", "2000", "--bootstrap_seed", "3",
                            "--train_log", f"pruned={log}", "--plots_dir", str(out / "figs")))
    md = (out / "RESULTS.md").read_text()
    js = json.loads((out / "results.json").read_text())
    assert js == json.loads(json.dumps(rep))
    by = {m["name"]: m for m in js["models"]}

    # per-utterance errors and reference words in the JSON, summing to result.txt's counts
    st = js["statistics"]
    assert st["enabled"] and st["control"] == "pruned" and st["reference"] == "baseline"
    assert st["sets"]["dev_clean"] == {"utterances": ["s1-s1-u1", "s1-s1-u2"], "words": [4, 4]}
    for name, per_set in UTT_ERRORS.items():
        for s, errs in per_set.items():
            assert by[name]["wer"][s]["utt_errors"] == errs
            assert sum(errs) == by[name]["wer"][s]["counts"]["Err"]

    # intervals, by enumeration: dev_clean baseline resamples take u1 twice (WER 0),
    # once (12.5) or never (25) with probabilities 1/4, 1/2, 1/4, so the 2.5 % and 97.5 %
    # percentiles of 2000 replicates are 0 and 25; every other cell has one possible WER
    expected = {"baseline": {"dev_clean": "12.5 [0.0, 25.0]", "test": "33.3 [33.3, 33.3]"},
                "pruned": {"dev_clean": "25.0 [25.0, 25.0]", "test": "66.7 [66.7, 66.7]"}}
    _, rows = _summary_rows(md)
    for name, cells in expected.items():
        for s, cell in cells.items():
            assert rows[name][f"WER {s}"] == cell

    # paired: pruned vs baseline on dev_clean makes one more error unless u1 is never drawn
    # (a tie, probability 1/4, counted one half): P = 1/8; on test always worse: P = 0
    p_dev = by["pruned"]["paired"]["dev_clean"]["vs_reference"]
    assert abs(p_dev["p_improvement"] - 0.125) < 0.03  # Monte Carlo sd 0.006
    assert abs(p_dev["ties"] - 0.25) < 0.05
    assert p_dev["delta_wer"] == pytest.approx(100 * (2 - 1) / 8)
    assert by["pruned"]["paired"]["test"]["vs_reference"]["p_improvement"] == 0.0
    assert by["baseline"]["paired"]["test"]["vs_control"]["p_improvement"] == 1.0
    assert by["baseline"]["paired"]["test"]["vs_reference"] is None
    assert by["pruned"]["paired"]["test"]["vs_control"] is None
    table = md.split("## Paired bootstrap", 1)[1].split("\n## ", 1)[0]
    assert "| P(better than baseline) |" in table and "| P(better than pruned) |" in table
    assert "| pruned | test | 66.7 [66.7, 66.7] | +33.33 [+33.33, +33.33] | 0.000 | - | - |" in table
    assert "| baseline | test | 33.3 [33.3, 33.3] | - | - | -33.33 [-33.33, -33.33] | 1.000 |" in table
    assert "Bisani and Ney" in md and "counts one half" in md
    # --pair pruned:baseline: the same comparison as pruned's vs_reference, its own table
    assert st["pairs"] == [["pruned", "baseline"]]
    for s in ("dev_clean", "test"):
        assert by["pruned"]["paired"][s]["vs"] == {
            "baseline": by["pruned"]["paired"][s]["vs_reference"]}
        assert by["baseline"]["paired"][s]["vs"] == {}
    pairs = md.split("### Chosen pairs (`--pair`)", 1)[1].split("\n## ", 1)[0]
    assert ("| pruned | baseline | test | 66.7 [66.7, 66.7] | 33.3 [33.3, 33.3] | "
            "+33.33 [+33.33, +33.33] | 0.000 |") in pairs
    assert "| pruned | baseline | dev_clean | 25.0 [25.0, 25.0] | 12.5 [0.0, 25.0] |" in pairs

    # plots: in --plots_dir, linked relative to RESULTS.md, valid PNGs
    pl = js["plots"]
    assert pl["wer_vs_params"] == "figs/wer_vs_params.png"
    assert pl["structure"] == {"pruned": "figs/structure_pruned.png"}  # the dense one: no map
    assert pl["training_curves"] == "figs/training_curves.png"
    for rel in (pl["wer_vs_params"], pl["structure"]["pruned"], pl["training_curves"]):
        assert f"]({rel})" in md
        assert (out / rel).read_bytes()[:8] == plots.PNG_SIGNATURE
    assert sorted(os.listdir(out / "figs")) == [
        "structure_pruned.png", "training_curves.png", "wer_vs_params.png"]
    assert by["pruned"]["kept"]["encoder"]["kept"][1] == [0, 0, 0, 10]  # ffn1, heads, conv, ffn2


def test_bootstrap_and_plots_can_be_switched_off(setup, tmp_path):
    rep = report.main(_argv(setup, tmp_path, "--latency_utts", "0", "--bootstrap_samples", "0",
                            "--plots", "false"))
    md = (tmp_path / "RESULTS.md").read_text()
    _, rows = _summary_rows(md)
    assert rows["baseline"]["WER dev_clean"] == "12.5"
    assert "## Paired bootstrap" not in md and "## Plots" not in md
    assert rep["statistics"] == {"enabled": False} and rep["plots"] == {"enabled": False}
    assert sorted(os.listdir(tmp_path)) == ["RESULTS.md", "results.json"]


def test_bad_statistics_inputs_are_named(setup, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(evidence.EvidenceError, match="--control 'nope'"):
        report.main(_argv(setup, out, "--latency_utts", "0", "--control", "nope"))
    for bad, what in (("pruned", "expected MODEL:OTHER"), ("pruned:nope", "'nope' is not"),
                      ("pruned:pruned", "compared with itself")):
        with pytest.raises(evidence.EvidenceError, match=f"--pair '{bad}'.*{what}"):
            report.main(_argv(setup, out, "--latency_utts", "0", "--pair", bad))
    with pytest.raises(evidence.EvidenceError, match="given twice"):
        report.main(_argv(setup, out, "--latency_utts", "0", "--pair", "pruned:baseline",
                          "--pair", "pruned:baseline"))
    with pytest.raises(evidence.EvidenceError, match="missing.log"):
        report.main(_argv(setup, out, "--latency_utts", "0",
                          "--train_log", f"pruned={tmp_path / 'missing.log'}"))
    # a hyp.trn that no longer matches result.txt
    trn = setup["dirs"]["pruned"] / "decode_asr_test" / "score_wer" / "hyp.trn"
    saved = trn.read_text()
    try:
        trn.write_text("A B C\t(s2-s2-u1)\n")
        with pytest.raises(evidence.EvidenceError, match="out of date"):
            report.main(_argv(setup, out, "--latency_utts", "0"))
    finally:
        trn.write_text(saved)
    assert not out.exists()
