"""Out-of-distribution sets of the mini corpus: unseen voices and rates, new sentences, the
reverberant noisy copy (its impulse response and noise measured), restartability."""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from espnet_prune.data import mini_corpus as mc
from espnet_prune.data.kaldi_dir import read_data_dir
from espnet_prune.data.mini_corpus import ood


pytest_plugins = ["recipe_fixtures"]

SMALL = ood.OodConfig(n_utts=8, n_speakers=4)


def every_voice(accent: str, variant: str) -> bool:
    return True


def test_speakers_are_unseen_and_speak_outside_the_corpus_prosody() -> None:
    corpus = mc.CorpusConfig()
    used = {(s.accent, s.variant) for spks in mc.make_speakers(corpus, every_voice).values()
            for s in spks}
    spks = ood.ood_speakers(corpus, ood.OodConfig(), every_voice)
    assert len({s.voice for s in spks}) == 8
    assert not {(s.accent, s.variant) for s in spks} & used
    corpus_rates = (135 * 0.93, 195 * 1.07)  # make_speakers' range, build's +-7 % jitter
    for s in spks:
        assert s.rate * 1.07 < corpus_rates[0] or s.rate * 0.93 > corpus_rates[1]
        assert not 25 <= s.pitch <= 75
    assert {s.rate < 130 for s in spks} == {True, False}  # slow and fast speakers both
    with pytest.raises(ValueError, match="n_speakers"):
        ood.ood_speakers(corpus, ood.OodConfig(n_speakers=10_000), every_voice)


def test_sentences_are_new_distinct_and_deterministic() -> None:
    corpus = mc.CorpusConfig(n_train=300, n_dev=50, n_test=50)
    cfg = ood.OodConfig(n_utts=200)
    plan = ood.ood_plan(corpus, cfg, every_voice)
    texts = [u.text for u in plan]
    assert len(texts) == 200 == len(set(texts))
    assert not set(texts) & {u.text for u in mc.make_plan(corpus, every_voice)}
    assert plan == ood.ood_plan(corpus, cfg, every_voice)
    other = ood.ood_plan(corpus, ood.OodConfig(n_utts=200, seed=1), every_voice)
    assert [u.text for u in other] != texts


def test_room_impulse_response_decays_60_db_in_rt60() -> None:
    rt60 = 0.5
    h = ood.room_impulse_response(rt60, np.random.default_rng(0))
    assert h.size == 8000 and np.sum(h ** 2) == pytest.approx(1.0)
    assert h[0] == h.max() and np.all(h[1:40] == 0)  # direct path, then 2.5 ms of nothing
    # Schroeder's backward-integrated energy decay: fit its slope between -5 and -25 dB
    edc = np.cumsum(h[::-1] ** 2)[::-1][40:]  # the reverberant part (after the direct path)
    db = 10 * np.log10(edc / edc[0])
    t = np.arange(db.size) / 16000
    sel = (db < -5) & (db > -25)
    slope = np.polyfit(t[sel], db[sel], 1)[0]  # dB per second
    assert -60 / slope == pytest.approx(rt60, rel=0.15)


def test_pink_noise_has_unit_power_and_a_1_over_f_spectrum() -> None:
    x = ood.pink_noise(2 ** 16, np.random.default_rng(1))
    assert np.mean(x ** 2) == pytest.approx(1.0)
    psd = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size, 1 / 16000)
    sel = (f > 100) & (f < 4000)
    slope = np.polyfit(np.log10(f[sel]), np.log10(psd[sel]), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.1)


def test_degrade_mixes_at_the_drawn_snr() -> None:
    # a steady tone: its reverberant copy has a known power, the rest is the pink noise
    cfg = ood.OodConfig(rt60=(0.3, 0.3), noisy_snr=(7.0, 7.0))
    t = np.arange(32000) / 16000
    x = np.round(8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    y, rt60, snr = ood.degrade(x, 5, cfg)
    assert (rt60, snr) == (0.3, 7.0) and y.size == x.size + 4800 - 1
    assert np.abs(y).max() == pytest.approx(32767 * 10 ** (-3 / 20), rel=1e-3)
    yf = y.astype(np.float64)
    # least-squares fit of the tone (any phase) over the steady middle: the residual is noise
    mid = slice(8000, 32000)
    basis = np.stack([np.sin(2 * np.pi * 440 * t[mid]), np.cos(2 * np.pi * 440 * t[mid])], 1)
    coef, *_ = np.linalg.lstsq(basis, yf[mid], rcond=None)
    tone = basis @ coef
    measured = 10 * np.log10(np.mean(tone ** 2) / np.mean((yf[mid] - tone) ** 2))
    assert measured == pytest.approx(7.0, abs=1.0)


def test_ood_sets_beside_the_corpus_restartable(tiny_corpus: Path, tmp_path: Path) -> None:
    work = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, work)
    assert ood.make_ood(work, SMALL, log=lambda s: None) == {"skipped": False, "synthesised": 8}
    sets = {s: read_data_dir(work / s) for s in ood.OOD_SETS}  # validates them
    assert sets["ood"].text == sets["ood_noisy"].text and len(sets["ood"].text) == 8
    corpus_voices = {v for s in mc.SPLITS for v in read_data_dir(work / s).extra["utt2voice"].values()}
    assert not set(sets["ood"].extra["utt2voice"].values()) & corpus_voices
    corpus_text = {t for s in mc.SPLITS for t in read_data_dir(work / s).text.values()}
    assert not set(sets["ood"].text.values()) & corpus_text
    for utt, path in sets["ood_noisy"].wav_scp.items():
        with wave.open(path) as w:
            assert (w.getframerate(), w.getnchannels()) == (16000, 1)
        assert sets["ood_noisy"].utt2dur[utt] > sets["ood"].utt2dur[utt]  # the reverberant tail
        assert 5.0 <= float(sets["ood_noisy"].extra["utt2snr"][utt]) <= 10.0
    marker = json.loads((work / ood.MARKER).read_text())
    assert marker["ood"]["n_utts"] == 8
    # complete: nothing redone, nothing rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in work.rglob("*")}
    assert ood.make_ood(work, SMALL, log=lambda s: None)["skipped"]
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*")} == mtimes
    # interrupted: the missing wavs only, the same bytes
    digest = {p.name: p.read_bytes() for p in (work / "wav").rglob("od*.wav")}
    (work / ood.MARKER).unlink()
    victim = sorted((work / "wav" / "ood").glob("*.wav"))[0]
    victim.unlink()
    (work / "wav" / "ood_noisy" / victim.name).unlink()
    assert ood.make_ood(work, SMALL, nj=1, log=lambda s: None)["synthesised"] == 1
    assert {p.name: p.read_bytes() for p in (work / "wav").rglob("od*.wav")} == digest


def test_ood_needs_a_finished_corpus(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no finished mini corpus"):
        ood.make_ood(tmp_path, SMALL, log=lambda s: None)
    assert ood.main(["--corpus_dir", str(tmp_path)]) == 1
