"""Synthetic corpus: grammar, determinism, split disjointness, audio, restartability."""

from __future__ import annotations

import hashlib
import random
import shutil
import wave
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from espnet_prune.data import mini_corpus as mc
from espnet_prune.data.mini_corpus import build, grammar, tts
from espnet_prune.data.kaldi_dir import read_data_dir

pytest.register_assert_rewrite("recipe_fixtures")  # imported before pytest loads it as a plugin
from recipe_fixtures import TINY  # noqa: E402

try:
    mc.get_synthesizer("auto")
    HAVE_TTS = True
except mc.SynthesisUnavailable:
    HAVE_TTS = False

needs_tts = pytest.mark.skipif(not HAVE_TTS, reason="no eSpeak NG backend")
pytest_plugins = ["recipe_fixtures"]  # tiny_corpus: one corpus for this and the teacher recipe test


def _digest(root: Path) -> Dict[str, str]:
    """md5 of every wav and Kaldi file under root (relative path -> hex)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and (p.suffix == ".wav" or p.parent.name in mc.SPLITS):
            data = p.read_bytes()
            if p.name == "wav.scp":  # absolute paths differ between output dirs
                data = data.replace(str(root.resolve()).encode(), b"ROOT")
            out[str(p.relative_to(root))] = hashlib.md5(data).hexdigest()
    return out


@pytest.fixture
def corpus(tiny_corpus: Path) -> Path:
    """The session's TINY corpus, made with nj=2 (read only)."""
    return tiny_corpus


def test_grammar_size_and_lengths() -> None:
    vocab = mc.grammar_vocabulary()
    assert 100 <= len(vocab) <= 150
    assert all(w.isupper() and w.isalpha() for w in vocab)
    rng = random.Random(0)
    sents = [mc.sample_sentence(rng) for _ in range(3000)]
    lengths = [len(s.split()) for s in sents]
    assert min(lengths) == mc.MIN_WORDS and max(lengths) == mc.MAX_WORDS
    used = {w for s in sents for w in s.split()}
    assert used == set(vocab)  # every word is reachable
    assert len(set(sents)) > 1500  # plenty of distinct sentences


def test_undefined_nonterminal_is_caught() -> None:
    with pytest.raises(ValueError, match=r"uses undefined \$NOPE"):
        grammar.check_grammar({"$S": ["HELLO $NOPE"]})


def test_plan_is_disjoint_and_deterministic() -> None:
    cfg = mc.CorpusConfig(n_train=300, n_dev=50, n_test=50, seed=7)
    plan = mc.make_plan(cfg, lambda a, v: True)
    assert plan == mc.make_plan(cfg, lambda a, v: True)
    by = {s: [u for u in plan if u.split == s] for s in mc.SPLITS}
    assert [len(by[s]) for s in mc.SPLITS] == [300, 50, 50]
    voices = {s: {u.speaker.voice for u in by[s]} for s in mc.SPLITS}
    assert not voices["train"] & voices["dev"] and not voices["train"] & voices["test"]
    assert not voices["dev"] & voices["test"]
    texts = [u.text for u in plan]
    assert len(set(texts)) == len(texts)
    assert mc.make_plan(mc.CorpusConfig(n_train=300, n_dev=50, n_test=50, seed=8),
                        lambda a, v: True) != plan


@needs_tts
def test_corpus_layout_and_disjointness(corpus: Path) -> None:
    data = {s: read_data_dir(corpus / s) for s in mc.SPLITS}  # validates every dir
    assert [len(data[s]) for s in mc.SPLITS] == [24, 6, 6]
    voice = {s: set(data[s].extra["utt2voice"].values()) for s in mc.SPLITS}
    assert len(voice["train"]) == 4
    assert not voice["train"] & (voice["dev"] | voice["test"])
    train_text = set(data["train"].text.values())
    for s in ("dev", "test"):
        assert not train_text & set(data[s].text.values())
    for d in data.values():
        for utt, v in d.extra["utt2voice"].items():
            assert v.split("+")[0] == d.extra["utt2accent"][utt]
            assert utt.startswith(d.utt2spk[utt] + "-")
        assert all(t == t.upper() and 3 <= len(t.split()) <= 10 for t in d.text.values())
    assert (corpus / ".done").is_file()


@needs_tts
def test_audio_is_16k_mono_nonsilent(corpus: Path) -> None:
    d = read_data_dir(corpus / "train")
    for utt, path in d.wav_scp.items():
        with wave.open(path) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
        assert abs(len(x) / 16000 - d.utt2dur[utt]) < 1e-3
        assert 0.4 < len(x) / 16000 < 8.0
        peak = np.abs(x).max()
        assert 0.2 * 32768 < peak < 32767  # normalised, not clipped
        # speech: energy varies a lot between 25 ms frames (not stationary noise)
        frames = x[: len(x) // 400 * 400].reshape(-1, 400)
        e = 10 * np.log10((frames ** 2).mean(1) + 1e-9)
        assert np.percentile(e, 95) - np.percentile(e, 5) > 12


@needs_tts
def test_same_seed_same_bytes_any_nj(corpus: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    mc.make_corpus(again, TINY, nj=1, log=lambda s: None)
    assert _digest(again) == _digest(corpus)
    other = tmp_path / "other"
    cfg = mc.CorpusConfig(**{**TINY.__dict__, "seed": 4})
    mc.make_corpus(other, cfg, nj=2, log=lambda s: None)
    assert (other / "train" / "text").read_text() != (corpus / "train" / "text").read_text()


@needs_tts
def test_restart_does_no_work_and_resume_is_identical(corpus: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(corpus, work)
    for s in mc.SPLITS:  # wav.scp holds absolute paths: rewrite them for the copy
        p = work / s / "wav.scp"
        p.write_text(p.read_text().replace(str(corpus.resolve()), str(work.resolve())))
    mtimes = {p: p.stat().st_mtime_ns for p in work.rglob("*")}
    res = mc.make_corpus(work, TINY, nj=2, log=lambda s: None)
    assert res["skipped"] and res["synthesised"] == 0
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*")} == mtimes
    # simulate an interrupted run: marker gone, a few wavs gone, a stale temp file
    (work / ".done").unlink()
    victims = sorted((work / "wav" / "dev").glob("*.wav"))[:3]
    for v in victims:
        v.unlink()
    (work / "wav" / "dev" / ".dv000-00000.wav.123.tmp").write_bytes(b"junk")
    res = mc.make_corpus(work, TINY, nj=2, log=lambda s: None)
    assert res["synthesised"] == 3
    assert _digest(work) == _digest(corpus)
    assert not list(work.rglob("*.tmp"))


@needs_tts
def test_other_arguments_refused_without_overwrite(corpus: Path, tmp_path: Path) -> None:
    work = tmp_path / "w"
    shutil.copytree(corpus, work)
    cfg = mc.CorpusConfig(**{**TINY.__dict__, "n_train": 25})
    with pytest.raises(FileExistsError, match="other arguments"):
        mc.make_corpus(work, cfg, log=lambda s: None)


@needs_tts
def test_failure_names_the_utterance(tmp_path: Path, monkeypatch) -> None:
    def broken(synth, utt, out_wav, cfg):
        if utt.utt_id == "dv001-00001":
            raise ValueError("synthesiser exploded")
        mc.write_wav(out_wav, np.zeros(1600, dtype=np.int16))

    monkeypatch.setattr(build, "_synth_one", broken)
    with pytest.raises(RuntimeError, match=r"dv001-00001.*synthesiser exploded"):
        mc.make_corpus(tmp_path / "c", TINY, nj=2, log=lambda s: None)
    assert not (tmp_path / "c" / ".done").exists()
    assert not (tmp_path / "c" / "dev" / "wav.scp").exists()


def test_no_backend_gives_clear_error(monkeypatch) -> None:
    def no_lib():
        raise mc.SynthesisUnavailable("python package 'espeakng-loader' is not installed")

    monkeypatch.setattr(tts, "EspeakLibrary", no_lib)
    monkeypatch.setattr(tts.shutil, "which", lambda name: None)
    with pytest.raises(mc.SynthesisUnavailable, match="pip install espeakng-loader.*apt-get install espeak-ng"):
        mc.get_synthesizer("auto")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng binary not installed")
def test_binary_backend_speaks() -> None:
    synth = mc.get_synthesizer("binary")
    spk = mc.Speaker("x", "en-us", "m3", 170, 50, 50, 0)
    assert synth.has_voice("en-us", "m3") and not synth.has_voice("en-us", "nonexistent")
    pcm = synth.synthesize("turn on the light", spk, 170, 0)
    assert pcm.dtype == np.int16 and len(pcm) > 0.4 * synth.sample_rate
    y = mc.postprocess(pcm, synth.sample_rate, np.random.default_rng(0))
    assert np.abs(y).max() > 3000
