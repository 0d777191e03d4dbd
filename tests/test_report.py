"""The recipe's results table (espnet_prune.recipe.report) on two tiny feature-input models."""

import json
import math
import re
import shutil
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_CONF, write_asr_config
from espnet_prune.data.scoring import score_files
from espnet_prune.model_io import save_asr_model
from espnet_prune.recipe import measure, report

VOCAB = ["<blank>", "<unk>", "A", "B", "C", "D", "E", " ", "<sos/eos>"]
PRUNED_BLOCKS = [
    {"heads": 2, "ffn1_units": 20, "ffn2_units": 48, "conv_channels": 16},
    {"heads": 0, "ffn1_units": 0, "ffn2_units": 10, "conv_channels": 0},
    {"heads": 4, "ffn1_units": 48, "ffn2_units": 30, "conv_channels": 32},
]
SETS = ["dev_clean", "test"]

# Transcripts with hand-counted errors: model -> set -> (refs, hyps).
REFS = {"dev_clean": {"s1-u1": "A B C D", "s1-u2": "E A B C"}, "test": {"s2-u1": "A B C"}}
HYPS = {
    "baseline": {"dev_clean": {"s1-u1": "A B C D", "s1-u2": "E A X C"},  # 1 sub / 8
                 "test": {"s2-u1": "A C"}},  # 1 del / 3
    "pruned": {"dev_clean": {"s1-u1": "A B D", "s1-u2": "E A B C Y"},  # 1 del + 1 ins / 8
               "test": {"s2-u1": "X Y C"}},  # 2 sub / 3
}
#: WER cells as sclite prints them (one decimal, halves up)
EXPECTED_WER = {"baseline": {"dev_clean": "12.5", "test": "33.3"},
                "pruned": {"dev_clean": "25.0", "test": "66.7"}}


def _config(path: Path, encoder: str, encoder_conf) -> Path:
    return write_asr_config(path, encoder, encoder_conf, vocab=VOCAB, input_size=20)


def _write_text(path: Path, texts) -> Path:
    path.write_text("".join(f"{u} {t}\n" for u, t in texts.items()))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import espnet_prune
    from espnet2.tasks.asr import ASRTask

    espnet_prune.register()
    root = tmp_path_factory.mktemp("report")
    confs = {"baseline": ("conformer", dict(TINY_CONF)),
             "pruned": ("pruned_conformer", dict(TINY_CONF, block_structures=PRUNED_BLOCKS))}
    models, dirs = {}, {}
    torch.manual_seed(0)
    for name, (enc, enc_conf) in confs.items():
        cfg = _config(root / f"{name}.yaml", enc, enc_conf)
        args = ASRTask.get_parser().parse_args(["--config", str(cfg), "--output_dir", "unused"])
        model = ASRTask.build_model(args)
        assert model.frontend is None
        dirs[name] = root / "exp" / name
        save_asr_model(dirs[name], model, args)
        models[name] = model
        for s in SETS:
            txt = root / "txt" / name / s
            txt.mkdir(parents=True)
            score_files(_write_text(txt / "ref", REFS[s]), _write_text(txt / "hyp", HYPS[name][s]),
                        dirs[name] / f"decode_asr_{s}" / "score_wer")
    # features of the timing set: 3 utterances, 20-dim fbank-like values
    feat_dir = root / "dump" / "test"
    feat_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lens = {"s2-u1": 40, "s2-u2": 65, "s2-u3": 90, "s2-u4": 30}
    with kaldiio.WriteHelper(f"ark,scp:{feat_dir / 'feats.ark'},{feat_dir / 'feats.scp'}") as w:
        for utt, t in lens.items():
            w(utt, rng.standard_normal((t, 20)).astype(np.float32))
    (feat_dir / "utt2num_frames").write_text("".join(f"{u} {t}\n" for u, t in lens.items()))
    dec = root / "decode.yaml"
    dec.write_text(yaml.safe_dump({"beam_size": 2, "ctc_weight": 0.3, "lm_weight": 0.0,
                                   "maxlenratio": 0.0, "minlenratio": 0.0, "nbest": 1,
                                   "ngpu": 0}))
    return {"root": root, "models": models, "dirs": dirs, "decode": dec, "lens": lens}


def _argv(s, out: Path, *extra):
    return ["--model", f"baseline={s['dirs']['baseline']}", "--model", f"pruned={s['dirs']['pruned']}",
            "--test_sets", *SETS, "--data_dir", str(s["root"] / "dump"),
            "--decode_name", "decode_asr", "--inference_config", str(s["decode"]),
            "--frames_per_second", "100", "--output", str(out / "RESULTS.md"),
            "--json", str(out / "results.json"), *extra]


def _summary_rows(md: str):
    lines = md.split("## Summary", 1)[1].split("\n## ", 1)[0].splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    return head, {r[0]: dict(zip(head, r)) for r in
                  ([c.strip() for c in ln.strip("|").split("|")] for ln in table[2:])}


def test_report_against_independent_references(setup, tmp_path):
    from espnet_prune.bin.profile import count_encoder_macs
    from espnet_prune.cost import structure_cost
    from espnet_prune.structure import BlockStructure, ConformerDims

    s = setup
    threads_before = torch.get_num_threads()
    rep = report.main(_argv(s, tmp_path, "--latency_set", "test", "--latency_utts", "3",
                            "--latency_repeats", "2", "--decode_repeats", "1", "--threads", "1"))
    assert torch.get_num_threads() == threads_before
    md = (tmp_path / "RESULTS.md").read_text()
    js = json.loads((tmp_path / "results.json").read_text())
    assert js == json.loads(json.dumps(rep))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "RESULTS.md", "results.json", "structure_pruned.png", "wer_vs_params.png"]

    head, rows = _summary_rows(md)
    assert head == ["model", "WER dev_clean", "WER test", "params (M)", "params ratio",
                    "enc params (M)", "enc MACs@10s (G)", "MACs ratio", "dec MACs/token ratio",
                    "inference MACs ratio", "enc latency ratio",
                    "decode RTF (ESPnet decoder)", "decode RTF (fast decoder)", "RTF ratio"]
    assert list(rows) == ["baseline", "pruned"]  # no published row without --published
    assert "published" not in js and "not reproduced" not in md

    # WER: hand-counted errors of the transcripts scored into result.txt
    for name in ("baseline", "pruned"):
        for st in SETS:
            assert rows[name][f"WER {st}"].split(" [")[0] == EXPECTED_WER[name][st]
    assert "|decode_asr_dev_clean|2|8|87.5|12.5|0.0|0.0|12.5|50.0|" in md
    assert "|decode_asr_test|1|3|66.7|0.0|33.3|0.0|33.3|100.0|" in md  # baseline
    assert "|decode_asr_dev_clean|2|8|87.5|0.0|12.5|12.5|25.0|100.0|" in md  # pruned
    assert js["models"][1]["wer"]["dev_clean"]["counts"]["Ins"] == 1

    # params: numel of the models that were saved
    numel = {n: sum(p.numel() for p in m.parameters()) for n, m in s["models"].items()}
    enc_numel = {n: sum(p.numel() for p in m.encoder.parameters()) for n, m in s["models"].items()}
    by = {m["name"]: m for m in js["models"]}
    assert numel["pruned"] < numel["baseline"]
    assert by["pruned"]["params"]["total"] == numel["pruned"]
    assert by["pruned"]["params"]["encoder"] == enc_numel["pruned"]
    ratio = numel["pruned"] / numel["baseline"]
    assert by["pruned"]["params_ratio"] == pytest.approx(ratio, rel=1e-12)
    assert rows["pruned"]["params ratio"] == f"{ratio:.3f}"
    assert rows["baseline"]["params ratio"] == "1.000"
    assert by["pruned"]["sparsity"]["params_whole_model"] == pytest.approx(1 - ratio)

    # MACs: the cost model, and torch's FLOP counter on the real encoders
    dims = ConformerDims.from_encoder_conf(20, TINY_CONF)
    pruned_structure = [BlockStructure.from_dict(b) for b in PRUNED_BLOCKS]
    macs = {"baseline": structure_cost(dims, dims.dense_structure(), 10.0, 100.0)["macs"],
            "pruned": structure_cost(dims, pruned_structure, 10.0, 100.0)["macs"]}
    for name in macs:
        assert by[name]["encoder_macs"] == macs[name]
        assert by[name]["encoder_macs"] == count_encoder_macs(s["models"][name].encoder, 20, 1000)
    assert rows["pruned"]["MACs ratio"] == f"{macs['pruned'] / macs['baseline']:.3f}"
    assert rows["pruned"]["enc MACs@10s (G)"] == f"{macs['pruned'] / 1e9:.3f}"
    assert by["pruned"]["sparsity"]["macs_encoder"] == pytest.approx(1 - macs["pruned"] / macs["baseline"])
    # inference MACs: encoder + CTC projection + 40 decoded tokens (both decoders are the same)
    from espnet_prune.cost import frontend_cost
    from espnet_prune.cost import decoder_cost
    from espnet_prune.structure import DecoderDims

    t_enc = frontend_cost(dims, 1000)[2]
    for name, model in s["models"].items():
        conf = yaml.safe_load((s["dirs"][name] / "config.yaml").read_text())["decoder_conf"]
        ddims = DecoderDims.from_decoder_conf(model.vocab_size, 32, conf)
        dec = decoder_cost(ddims, ddims.dense_structure(), memory_frames=t_enc, tokens=40)
        ctc = t_enc * 32 * model.vocab_size
        assert by[name]["inference_macs"] == macs[name] + ctc + dec["utterance_macs"]
        assert by[name]["decoder_token_macs"] == pytest.approx((dec["utterance_macs"] - dec["memory_macs"]) / 40)
    assert rows["pruned"]["dec MACs/token ratio"] == "1.000"
    assert rows["pruned"]["inference MACs ratio"] == (
        f"{by['pruned']['inference_macs'] / by['baseline']['inference_macs']:.3f}")

    # timing: first 3 utterances of the set, positive finite ratios, reference ratio 1
    assert js["timing"]["utterances"] == ["s2-u1", "s2-u2", "s2-u3"]
    assert js["timing"]["audio_seconds"] == pytest.approx((40 + 65 + 90) / 100)
    for name in ("baseline", "pruned"):
        lat, dec, esp = by[name]["encoder_latency"], by[name]["decode"], by[name]["decode_espnet"]
        assert dec["decoder"] == "fast" and esp["decoder"] == "espnet"
        for v in (lat["ratio"], lat["ratio_median_utt"], dec["ratio"], dec["rtf"], lat["total_s"],
                  esp["rtf"], esp["ratio"], by[name]["fast_decoder_ratio"]):
            assert v > 0 and math.isfinite(v)
        for d in (dec, esp):
            assert d["rtf"] == pytest.approx(d["total_s"] / js["timing"]["audio_seconds"])
        assert by[name]["fast_decoder_ratio"] == pytest.approx(dec["total_s"] / esp["total_s"])
        assert by[name]["fast_decoder_same_hyps"] is True  # same n-best from both decoders
        for col in ("enc latency ratio", "decode RTF (ESPnet decoder)", "decode RTF (fast decoder)",
                    "RTF ratio"):
            assert 0 < float(rows[name][col]) < math.inf
    assert js["timing"]["decode_repeatable"] is True  # every repeat of a decode gives the same n-best
    assert by["baseline"]["encoder_latency"]["ratio"] == 1.0
    assert by["baseline"]["decode"]["ratio"] == 1.0 and by["baseline"]["decode_espnet"]["ratio"] == 1.0
    assert js["settings"]["fast_decoder"] is True
    assert js["settings"]["inference_options"]["beam_size"] == 2
    assert js["settings"]["inference_options_ignored"] == ["ngpu"]

    # header: environment and the exact command
    assert f"pytorch {torch.__version__}" in md
    assert "--latency_repeats 2" in js["command"] and js["command"] in md
    assert md.rstrip().endswith("|decode_asr_test|1|3|33.3|66.7|0.0|0.0|66.7|100.0|")


def test_published_rows_only_when_asked(setup, tmp_path):
    rep = report.main(_argv(setup, tmp_path, "--latency_utts", "0", "--published", "librispeech_100"))
    md = (tmp_path / "RESULTS.md").read_text()
    head, rows = _summary_rows(md)
    pub = [r for n, r in rows.items() if "published, not reproduced here" in n]
    assert len(pub) == 1 and len(rows) == 3
    assert pub[0]["WER dev_clean"] == "6.3"  # mapped by set name
    assert pub[0]["WER test"] == "-"  # no published number for a set named 'test'
    assert all(pub[0][c] == "-" for c in head[3:])
    assert rep["published"]["matched_sets"] == ["dev_clean"]
    # no timing asked: no ratios invented
    assert rows["pruned"]["enc latency ratio"] == "-"
    assert rows["pruned"]["decode RTF (fast decoder)"] == "-" == rows["pruned"]["decode RTF (ESPnet decoder)"]


def test_bad_inputs_name_the_path(setup, tmp_path):
    s = setup
    out = tmp_path / "out"
    # the baseline has its results under decode_partial_*, the pruned model has none
    for st in SETS:
        shutil.copytree(s["dirs"]["baseline"] / f"decode_asr_{st}",
                        s["dirs"]["baseline"] / f"decode_partial_{st}", dirs_exist_ok=True)
    missing = s["dirs"]["pruned"] / "decode_partial_dev_clean" / "score_wer" / "result.txt"
    with pytest.raises(report.ReportError, match=re.escape(str(missing))):
        report.main(_argv(s, out, "--decode_name", "decode_partial", "--latency_utts", "0"))
    feats = tmp_path / "nodump" / "test" / "feats.scp"
    with pytest.raises(report.ReportError, match=re.escape(str(feats))):
        report.main(_argv(s, out, "--data_dir", str(tmp_path / "nodump")))
    argv = _argv(s, out, "--latency_utts", "0")
    argv[3] = f"pruned={tmp_path / 'no_such_model'}"
    with pytest.raises(report.ReportError, match=re.escape(str(tmp_path / "no_such_model"))):
        report.main(argv)
    assert not out.exists()  # nothing written on error


def test_every_timed_decode_reads_its_own_copy_of_the_input(setup, tmp_path):
    """ESPnet's GlobalMVN normalizes in place: a tensor decoded twice is normalized twice.
    The report's timing loop must hand every call (warm-up included) a fresh copy."""
    import espnet_prune
    from espnet2.bin.asr_inference import Speech2Text
    from espnet2.tasks.asr import ASRTask

    espnet_prune.register()
    stats = tmp_path / "feats_stats.npz"  # far from zero mean / unit variance
    np.savez(stats, count=np.array(100), sum=np.full(20, 300.0), sum_square=np.full(20, 1000.0))
    cfg = _config(tmp_path / "mvn.yaml", "conformer", dict(TINY_CONF))
    conf = yaml.safe_load(cfg.read_text())
    conf.update(normalize="global_mvn", normalize_conf={"stats_file": str(stats)})
    cfg.write_text(yaml.safe_dump(conf))
    torch.manual_seed(3)
    args = ASRTask.get_parser().parse_args(["--config", str(cfg), "--output_dir", "unused"])
    save_asr_model(tmp_path / "mvn", ASRTask.build_model(args), args)
    s2t = Speech2Text(asr_train_config=str(tmp_path / "mvn/config.yaml"),
                      asr_model_file=str(tmp_path / "mvn/model.pth"), device="cpu",
                      beam_size=2, ctc_weight=0.3, maxlenratio=0.0, minlenratio=0.0, nbest=1)

    def decode(x):
        with torch.inference_mode():
            return [list(r[2]) for r in s2t(x)]

    x = torch.from_numpy(np.random.default_rng(5).standard_normal((60, 20)).astype(np.float32) * 6 + 3)
    original = x.clone()
    expected = decode(x.clone())
    # the hazard is real: decoding the caller's tensor changes it
    mutated = x.clone()
    decode(mutated)
    assert not torch.equal(mutated, original)

    seen = []
    measure.time_interleaved([decode, decode], [x, x], repeats=3, warmup_inputs=[x],
                            record=lambda m, i, out: seen.append(out))
    assert torch.equal(x, original)  # the caller's input is untouched
    assert len(seen) == 2 * 2 * 3 and all(h == expected for h in seen)


def test_decode_cost_column_prices_each_model_with_the_latency_table(setup, tmp_path):
    """--latency_table: each model's predicted decode seconds, the module-call overheads of
    the modules it keeps counted by hand on the built model (the pruned model drops some)."""
    table = dict(frontend_mac_s=0.0, encoder_mac_s=0.0, encoder_module_s=dict(ffn1=1.0, mha=1.0, conv=1.0, ffn2=1.0),
                 decoder_mac_s=0.0, decoder_sublayer_s=dict(self_attn=0.0, src_attn=0.0, ffn=0.0),
                 step_s=0.5, utterance_s=2.0, beam=2, seconds=1.0, steps=4)
    path = tmp_path / "latency.yaml"
    path.write_text(yaml.safe_dump(table))
    rep = report.main(_argv(setup, tmp_path, "--latency_utts", "0", "--latency_table", str(path)))
    kept = {name: sum(getattr(layer, m) is not None for layer in model.encoder.encoders
                      for m in ("self_attn", "feed_forward", "feed_forward_macaron", "conv_module"))
            for name, model in setup["models"].items()}
    assert kept["pruned"] < kept["baseline"]
    rows = {r["name"]: r for r in rep["models"]}
    for name in ("baseline", "pruned"):  # 1 s per module, 0.5 s per step for 4 steps, 2 s per utterance
        assert rows[name]["decode_cost_s"] == pytest.approx(kept[name] + 0.5 * 4 + 2.0)
    assert rows["pruned"]["decode_cost_ratio"] == pytest.approx((kept["pruned"] + 4) / (kept["baseline"] + 4))
    md = (tmp_path / "RESULTS.md").read_text()
    head, md_rows = _summary_rows(md)
    assert head[-2:] == ["decode cost ratio", "RTF ratio"]
    assert md_rows["pruned"]["decode cost ratio"] == f"{rows['pruned']['decode_cost_ratio']:.3f}"
    assert "**decode cost ratio**: one decode's seconds predicted by the latency table" in md
