"""Pruning a model the user already has (issue 11).

A tiny teacher is trained by ESPnet's own ``espnet2.bin.asr_train`` on raw audio of a
few synthetic mini-corpus utterances (default frontend, global MVN from
``--collect_stats``, its own sentencepiece model: ``tests/espnet_teacher.py``), then
``run.sh --teacher_config ... --teacher_model ... --data_format raw --stage 5`` prunes,
shrinks, fine-tunes, decodes and scores it. The checks before any stage are tested on
hand-made configs without training.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import yaml

from espnet_prune.recipe import teacher as T

pytest.register_assert_rewrite("recipe_fixtures")  # imported before pytest loads it as a plugin
from recipe_fixtures import REPO, recipe_dir, run_recipe, snapshot  # noqa: E402

pytest_plugins = ["recipe_fixtures"]  # teacher_run (in the background), tiny_corpus


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def pruned(teacher_run, tiny_corpus):
    """The run of ``recipe_fixtures.teacher_main`` (started in the background) on the tiny corpus."""
    assert teacher_run.returncode == 0, teacher_run.stderr[-4000:]
    root = teacher_run.work.parent
    result = json.loads((root / "result.json").read_text())
    teacher = {k: Path(v) for k, v in result["teacher"].items()}
    return dict(root=root, corpus=tiny_corpus, recipe=root / "espnet_recipe", teacher=teacher,
                work=teacher_run.work, args=result["args"], proc=teacher_run, user_files=result["user_files"])


def test_stages_5_to_9_prune_the_given_teacher(pruned):
    work, proc = pruned["work"], pruned["proc"]
    exp = work / "exp/mini_teacher"
    for stage in (5, 6, 8, 9):
        assert f"===== Stage {stage}:" in proc.stderr
    assert "training exp/mini_teacher/asr_baseline" not in proc.stderr  # no baseline training
    for p in ("asr_teacher/final/model.pth", "prune_params0.5/final/model.pth",
              "asr_teacher/final/decode_asr_test/score_wer/result.txt",
              "prune_params0.5/final/decode_asr_test/score_wer/result.txt",
              "data/train/speech_shape", "data/dev/text_shape.bpe"):
        assert (exp / p).is_file(), p
    results = json.loads((exp / "results.json").read_text())
    names = [m["name"] for m in results["models"]]
    assert names == ["teacher", "prune_params0.5"]
    assert abs(results["models"][1]["params_ratio"] - 0.5) < 0.02
    # the teacher row is the given model, decoded by the same stages
    assert results["models"][0]["params"]["total"] == _count_params(pruned["recipe"], pruned["teacher"])
    # speech_shape is in samples: the wav file's length
    import soundfile

    utt, n = (exp / "data/train/speech_shape").read_text().split("\n")[0].split()
    wav = dict(l.split(maxsplit=1) for l in (pruned["corpus"] / "train/wav.scp").read_text().splitlines())
    assert int(n) == soundfile.info(wav[utt]).frames


def _count_params(recipe: Path, teacher) -> int:
    """Parameters of the teacher as ESPnet itself builds it from the user's files."""
    from espnet2.tasks.asr import ASRTask

    cwd = os.getcwd()
    os.chdir(recipe)  # the config's paths are relative to the dir ESPnet trained in
    try:
        model, _ = ASRTask.build_model_from_file(str(teacher["config"]), str(teacher["model"]), "cpu")
    finally:
        os.chdir(cwd)
    return sum(p.numel() for p in model.parameters())


def test_users_directories_untouched(pruned):
    now = {**snapshot(pruned["corpus"]), **{f"r/{k}": v for k, v in snapshot(pruned["recipe"]).items()}}
    assert now == pruned["user_files"]


def test_shrunk_model_keeps_frontend_normalization_and_tokens(pruned, monkeypatch):
    recipe, work = pruned["recipe"], pruned["work"]
    teacher = yaml.safe_load((recipe / pruned["teacher"]["config"]).read_text())
    final_dir = work / "exp/mini_teacher/prune_params0.5/final"
    final = yaml.safe_load((final_dir / "config.yaml").read_text())
    assert final["encoder"] == "pruned_conformer"
    for key in ("frontend", "frontend_conf", "normalize", "token_list", "token_type"):
        assert final[key] == teacher[key], key
    # the stats and the BPE model are copies of the teacher's, inside the experiment
    stats = Path(final["normalize_conf"]["stats_file"])
    assert not stats.is_absolute() and str(stats).startswith("exp/mini_teacher/")
    ours, theirs = np.load(work / stats), np.load(recipe / teacher["normalize_conf"]["stats_file"])
    for k in ("count", "sum", "sum_square"):
        np.testing.assert_array_equal(ours[k], theirs[k])
    assert (work / final["bpemodel"]).read_bytes() == (recipe / teacher["bpemodel"]).read_bytes()

    # ESPnet's own Speech2Text decodes the pruned model from raw audio, with the teacher's
    # normalization (mean / std from the stats file, computed here independently)
    import soundfile
    import torch

    import espnet_prune
    from espnet2.bin.asr_inference import Speech2Text

    espnet_prune.register()
    monkeypatch.chdir(work)
    decode = yaml.safe_load((REPO / "conf/smoke/decode_asr.yaml").read_text())
    s2t = Speech2Text(asr_train_config=str(final_dir / "config.yaml"),
                      asr_model_file=str(final_dir / "model.pth"), device="cpu", **decode)
    count = float(theirs["count"])
    mean = theirs["sum"] / count
    std = np.sqrt(np.maximum(theirs["sum_square"] / count - mean ** 2, 1.0e-20))
    norm = s2t.asr_model.normalize
    np.testing.assert_allclose(norm.mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.std.numpy(), std, rtol=1e-4, atol=1e-6)
    assert type(s2t.asr_model.frontend).__name__ == "DefaultFrontend"
    assert s2t.asr_model.token_list == teacher["token_list"]

    # Which hypothesis a beam search keeps can flip on a near tie between machines and thread
    # counts; the score of a given hypothesis cannot. Both the recipe's 1-best (its decoding
    # processes) and Speech2Text's own are scored as ESPnet's beam search adds them up,
    # computed here independently from the model's CTC and decoder outputs.
    model = s2t.asr_model
    dec = final_dir / "decode_asr_test"
    hyps = _kaldi_text(dec / "text")
    written = _recipe_1best(dec)
    assert sorted(written) == sorted(hyps)
    wavs = [l.split(maxsplit=1) for l in (pruned["corpus"] / "test/wav.scp").read_text().splitlines()]
    for utt, path in wavs[:2]:
        speech, _ = soundfile.read(path, dtype="float32")
        with torch.no_grad():
            enc, _ = model.encode(torch.from_numpy(speech)[None], torch.tensor([len(speech)]))
            scored = [(*written[utt], None)]
            for maxlenratio, maxlen in ((0.0, None), (-3, 3)):  # and a search cut at 3 tokens
                s2t.maxlenratio = maxlenratio
                hyp = s2t(speech)[0][3]
                scored.append((hyp.yseq[1:-1].tolist(), float(hyp.score), maxlen))
            for ids, score, maxlen in scored:
                ours = _beam_score(model, enc[0], ids, decode["ctc_weight"], maxlen)
                # float32 network, other processes and thread counts; the written score has 4 decimals
                assert score == pytest.approx(ours, rel=1e-4, abs=1e-3), (utt, ids, maxlen)
        ids = written[utt][0]
        assert hyps[utt] == s2t.tokenizer.tokens2text(s2t.converter.ids2tokens(ids)), utt


def _kaldi_text(path: Path) -> dict:
    return dict(l.split(maxsplit=1) if " " in l else (l, "") for l in path.read_text().splitlines())


def _recipe_1best(dec: Path) -> dict:
    """utt -> (token ids, score) of the recipe's 1-best, as its decoding jobs wrote them."""
    out = {}
    for job in dec.glob("logdir/output.*/1best_recog"):
        scores = _kaldi_text(job / "score")  # str(tensor), e.g. "tensor(-12.3456)"
        for utt, ids in _kaldi_text(job / "token_int").items():
            value = re.fullmatch(r"tensor\((\S+)\)|(\S+)", scores[utt].strip())
            out[utt] = ([int(i) for i in ids.split()], float(value.group(1) or value.group(2)))
    return out


def _ctc_alpha(logp, labels):
    """CTC forward variables (blank 0): ``(T + 1, 2 L + 1)`` log-probabilities of having
    emitted exactly ``labels`` after ``t`` frames, in state ``s`` of the blank-interleaved
    label sequence (even ``s``: a blank last)."""
    import torch

    ext = [0]
    for c in labels:
        ext += [c, 0]
    n_frames, n_states = logp.shape[0], len(ext)
    skip = torch.tensor([s >= 2 and ext[s] != 0 and ext[s] != ext[s - 2] for s in range(n_states)])
    alpha = torch.full((n_frames + 1, n_states), -torch.inf, dtype=torch.float64)
    alpha[0, 0] = 0.0
    none = torch.tensor([-torch.inf], dtype=torch.float64)
    for t in range(1, n_frames + 1):
        a = alpha[t - 1]
        one = torch.cat([none, a])[:n_states]
        two = torch.where(skip, torch.cat([none, none, a])[:n_states], -torch.inf)
        alpha[t] = torch.logsumexp(torch.stack([a, one, two]), 0) + logp[t - 1, ext]
    return alpha


def _beam_score(model, enc, ids, ctc_weight: float, maxlen: Optional[int] = None) -> float:
    """ESPnet's beam-search score of ``<sos> ids <eos>`` on encoder output ``enc`` ``(T, d)``:
    ``(1 - w) * log p_att + w * log p_ctc``, the CTC part being what the prefix scores of
    the steps add up to (Graves 2012, 7.3): the whole sequence's probability when ``<eos>``
    was scored, the prefix probability of ``ids`` when the search reached ``maxlen`` tokens
    (``T`` for ``maxlenratio: 0``) and appended ``<eos>`` unscored (a second one after a
    scored ``<eos>`` at that step: then ``ids`` ends with it)."""
    import torch

    n_frames = enc.shape[0]
    scored_eos = len(ids) < (maxlen or n_frames) or ids[-1] == model.eos
    ids = [i for i in ids if i != model.eos]
    logp = model.ctc.log_softmax(enc[None])[0].double()
    if scored_eos:
        alpha = _ctc_alpha(logp, ids)[-1]
        ctc = float(torch.logsumexp(alpha[-2:] if ids else alpha[-1:], 0))
    else:  # prefix: the last label emitted at some frame t after the rest by t - 1
        alpha = _ctc_alpha(logp, ids[:-1])
        before = alpha[:, -1] if len(ids) >= 2 and ids[-2] == ids[-1] else torch.logsumexp(alpha[:, -2:], 1)
        ctc = float(torch.logsumexp(before[:-1] + logp[:, ids[-1]], 0))
    ys_in = torch.tensor([[model.sos] + list(ids)])
    logits, _ = model.decoder(enc[None], torch.tensor([n_frames]), ys_in, torch.tensor([len(ids) + 1]))
    att_logp = torch.log_softmax(logits[0], -1).double()
    targets = list(ids) + [model.eos]
    n = len(targets) if scored_eos else len(ids)
    att = float(sum(att_logp[i, targets[i]] for i in range(n)))
    return (1 - ctc_weight) * att + ctc_weight * ctc


def test_rerun_does_no_work(pruned):
    work = pruned["work"]
    before = snapshot(work / "exp")
    proc = run_recipe(work, *pruned["args"], "--stage", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training " not in proc.stderr and "imported the teacher" not in proc.stderr
    assert snapshot(work / "exp") == before


# --------------------------------------------------------------------------- checks before work


@pytest.fixture
def fake_teacher(tmp_path):
    """A teacher config + files laid out like an unpacked ESPnet model archive (paths relative
    to the archive root), and matching raw data dirs; no weights are trained."""
    import sentencepiece as spm

    root = tmp_path / "archive"
    sentences = ["TURN ON THE LIGHT", "MOVE THE BOOK TO THE BEDROOM", "SET AN ALARM AT TWO"] * 5
    tok = root / "data/token_list"
    tok.mkdir(parents=True)
    (tok / "train.txt").write_text("\n".join(sentences) + "\n")
    spm.SentencePieceTrainer.train(input=str(tok / "train.txt"), model_prefix=str(tok / "bpe"),
                                   vocab_size=25, model_type="unigram", hard_vocab_limit=False,
                                   minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(tok / "bpe.model"))
    pieces = sorted({p for s in sentences for p in sp.encode(s, out_type=str)})
    stats = root / "exp/asr_stats/train/feats_stats.npz"
    stats.parent.mkdir(parents=True)
    np.savez(stats, count=np.array(10), sum=np.zeros(4), sum_square=np.ones(4) * 10)
    model_dir = root / "exp/asr_model"
    model_dir.mkdir(parents=True)
    (model_dir / "valid.acc.ave.pth").write_bytes(b"not checked before work")
    conf = {
        "frontend": "default", "frontend_conf": {"n_fft": 512, "hop_length": 160, "n_mels": 4},
        "normalize": "global_mvn", "normalize_conf": {"stats_file": "exp/asr_stats/train/feats_stats.npz"},
        "encoder": "conformer", "encoder_conf": {"output_size": 8, "num_blocks": 1},
        "decoder": "transformer", "decoder_conf": {"num_blocks": 1},
        "model": "espnet", "model_conf": {"ctc_weight": 0.3},
        "token_type": "bpe", "bpemodel": "data/token_list/bpe.model",
        "token_list": ["<blank>", "<unk>", *pieces, "<sos/eos>"],
    }
    data = tmp_path / "dump/raw"
    for s in ("train", "dev"):
        (data / s).mkdir(parents=True)
        (data / s / "wav.scp").write_text("".join(f"u{i} /nowhere/u{i}.wav\n" for i in range(3)))
        (data / s / "text").write_text("".join(f"u{i} {t}\n" for i, t in enumerate(sentences[:3])))

    def write(c=None, prune=None):
        path = model_dir / "config.yaml"
        path.write_text(yaml.safe_dump(c or conf))
        prune_path = tmp_path / "prune.yaml"
        prune_path.write_text(yaml.safe_dump(prune or yaml.safe_load((REPO / "conf/smoke/prune_from_teacher.yaml").read_text())))
        return path, model_dir / "valid.acc.ave.pth", prune_path

    return dict(conf=conf, write=write, data=[data / "train", data / "dev"], root=root, tmp=tmp_path)


def _check(ft, conf=None, prune=None, data=None, root=None):
    config, model, prune_path = ft["write"](conf, prune)
    T.check_all(config, model, root, prune_path, ft["data"] if data is None else data)


def test_check_passes_on_a_matching_teacher(fake_teacher, monkeypatch):
    monkeypatch.chdir(fake_teacher["tmp"])  # relative paths resolve through the config's parents
    config, model, prune_path = fake_teacher["write"]()
    assert T.check_all(config, model, None, prune_path, fake_teacher["data"]) is None
    # the same call reads the files it was given: without the weights it fails
    with pytest.raises(T.TeacherError, match="--teacher_model: file not found"):
        T.check_all(config, Path(str(model) + ".missing"), None, prune_path, fake_teacher["data"])


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(encoder="transformer"), "encoder='transformer': only ESPnet's 'conformer'"),
    (lambda c: c.update(encoder="e_branchformer"), "encoder='e_branchformer'"),
    (lambda c: c["encoder_conf"].update(normalize_before=False), "encoder_conf.normalize_before=False"),
    (lambda c: c["encoder_conf"].update(input_layer="vgg2l"), "encoder_conf.input_layer='vgg2l'"),
    (lambda c: c.update(decoder="rnn"), "decoder='rnn'"),
    (lambda c: c.update(frontend="s3prl"), "frontend='s3prl'"),
    (lambda c: c["normalize_conf"].update(stats_file="exp/missing/feats_stats.npz"),
     "normalize_conf.stats_file=exp/missing/feats_stats.npz: file not found"),
    (lambda c: c.update(bpemodel="data/other/bpe.model"), "bpemodel=data/other/bpe.model: file not found"),
    (lambda c: c.update(token_list=c["token_list"][:-1] + ["▁ZEBRA", "▁QUUX", "<sos/eos>"]),
     "token_list does not match bpemodel"),
])
def test_check_rejects_teacher(fake_teacher, change, message):
    import copy

    conf = copy.deepcopy(fake_teacher["conf"])
    change(conf)
    with pytest.raises(T.TeacherError, match=None) as e:
        _check(fake_teacher, conf)
    assert message in str(e.value)


def test_check_rejects_text_the_tokens_do_not_cover(fake_teacher):
    text = fake_teacher["data"][1] / "text"
    text.write_text(text.read_text().lower())  # lower case for an upper-case model
    with pytest.raises(T.TeacherError) as e:
        _check(fake_teacher)
    assert f"{text}:" in str(e.value) and "map to <unk>" in str(e.value)


def test_check_rejects_missing_data(fake_teacher):
    (fake_teacher["data"][1] / "wav.scp").unlink()
    with pytest.raises(T.TeacherError) as e:
        _check(fake_teacher)
    assert f"{fake_teacher['data'][1] / 'wav.scp'}: not found" in str(e.value)
    (fake_teacher["data"][0] / "text").write_text("u0 TURN ON THE LIGHT\n")
    with pytest.raises(T.TeacherError, match="are in only one of wav.scp and text, e.g. u1 .only in wav.scp."):
        _check(fake_teacher, data=fake_teacher["data"][:1])


def test_check_rejects_architecture_in_the_pruning_config(fake_teacher):
    prune = yaml.safe_load((REPO / "conf/smoke/prune_asr_conformer.yaml").read_text())
    prune["encoder_conf"]["output_size"] = 32  # an architecture key
    with pytest.raises(T.TeacherError, match=r"encoder_conf\.output_size: the architecture comes from the teacher"):
        _check(fake_teacher, prune=prune)
    prune["encoder_conf"].pop("output_size")
    prune["model_conf"]["teacher_config"] = "exp/x/config.yaml"  # set by run.sh, harmless here
    prune["frontend"] = "default"
    with pytest.raises(T.TeacherError, match=r"frontend: comes from the teacher's config"):
        _check(fake_teacher, prune=prune)


@pytest.mark.parametrize("conf_dir", ["conf", "conf/mini", "conf/smoke"])
def test_shipped_pruning_configs_hold_pruning_options_only(conf_dir):
    for name in ("prune_asr_conformer.yaml", "prune_from_teacher.yaml"):
        prune = yaml.safe_load((REPO / conf_dir / name).read_text())
        assert T.check_prune_options(prune, where=name) is None
        assert prune["model_conf"]["target"] and prune["encoder"] == "gated_conformer"
        # the check is not vacuous: the same config with a teacher option is refused
        with pytest.raises(T.TeacherError, match=f"{name}: token_type: comes from the teacher"):
            T.check_prune_options({**prune, "token_type": "char"}, where=name)


def test_relative_paths_resolve_through_teacher_root_first(fake_teacher, tmp_path):
    config, _, _ = fake_teacher["write"]()
    other = tmp_path / "elsewhere"
    (other / "exp/asr_stats/train").mkdir(parents=True)
    shutil.copy(fake_teacher["root"] / "exp/asr_stats/train/feats_stats.npz", other / "exp/asr_stats/train")
    conf = T.load_config(config)
    assert T.teacher_files(config, conf, None)["stats_file"] == fake_teacher["root"] / "exp/asr_stats/train/feats_stats.npz"
    assert T.teacher_files(config, conf, other)["stats_file"] == other / "exp/asr_stats/train/feats_stats.npz"


def test_merged_config_takes_the_architecture_from_the_teacher(fake_teacher):
    prune = yaml.safe_load((REPO / "conf/smoke/prune_from_teacher.yaml").read_text())
    merged = T.merge_configs(fake_teacher["conf"], prune)
    assert merged["encoder"] == "gated_conformer" and merged["decoder"] == "gated_transformer"
    assert merged["encoder_conf"]["output_size"] == 8
    assert merged["encoder_conf"]["gate_granularities"] == prune["encoder_conf"]["gate_granularities"]
    assert merged["model_conf"]["ctc_weight"] == 0.3 and merged["model_conf"]["target"] == {"params": 0.5}
    assert merged["model_conf"]["cost_frames_per_second"] == 100.0  # 16 kHz / hop 160
    for k in ("frontend", "frontend_conf", "normalize", "normalize_conf", "token_list", "bpemodel"):
        assert merged[k] == fake_teacher["conf"][k]
    assert merged["max_epoch"] == prune["max_epoch"] and merged["model"] == "prune_espnet"


def test_run_sh_stops_before_any_stage(fake_teacher, tmp_path):
    import copy

    conf = copy.deepcopy(fake_teacher["conf"])
    conf["encoder"] = "e_branchformer"
    config, model, _ = fake_teacher["write"](conf)
    work = recipe_dir(tmp_path / "asr1")
    proc = run_recipe(work, "--conf_dir", "conf/smoke", "--teacher_config", str(config), "--teacher_model",
                str(model), "--data_format", "raw", "--dump_dir", str(tmp_path / "dump/raw"),
                "--test_sets", "dev")
    assert proc.returncode != 0
    assert "TeacherError" in proc.stderr and "encoder='e_branchformer'" in proc.stderr
    assert "===== Stage" not in proc.stderr
    assert not (work / "exp").exists() and not (work / "data").exists()
    proc = run_recipe(work, "--conf_dir", "conf/smoke", "--teacher_config", str(config), "--stage", "5")
    assert proc.returncode != 0 and "--teacher_config and --teacher_model go together" in proc.stderr


def test_prune_config_writes_the_target_and_the_decode_bound(fake_teacher, tmp_path):
    config, _, prune_path = fake_teacher["write"]()
    out = tmp_path / "merged.yaml"
    with pytest.raises(T.TeacherError, match=r"--bound decode:0.4: .*prune.yaml has no model_conf.latency_table"):
        T.write_prune_config(config.parent, prune_path, out, ["params:0.5"], "decode:0.4")
    assert not out.exists()
    prune = yaml.safe_load(prune_path.read_text())
    prune["model_conf"]["latency_table"] = "conf/latency.yaml"
    prune_path.write_text(yaml.safe_dump(prune))
    T.write_prune_config(config.parent, prune_path, out, ["params:0.5"], "decode:0.4")
    merged = yaml.safe_load(out.read_text())
    assert merged["model_conf"]["target"] == {"params": 0.5}
    assert merged["model_conf"]["bound"] == {"decode": 0.4}
    assert merged["model_conf"]["latency_table"] == "conf/latency.yaml"
