"""Log-mel features: equal to ESPnet's frontend and to a numpy reference, stats, nj, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import kaldiio
import numpy as np
import pytest
import soundfile
import torch

from espnet_prune.data import features as F
from espnet_prune.data.kaldi_dir import KaldiDataDir, read_data_dir, write_data_dir

FS = 16000
LENGTHS = {"spkA-u1": 16000, "spkA-u2": 8160, "spkB-u1": 24123, "spkB-u2": 5000,
           "spkB-u3": 40000}


def _signal(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / FS
    f0 = 100 + 50 * seed
    x = 0.3 * np.sin(2 * np.pi * f0 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    x += 0.2 * np.sin(2 * np.pi * 2200 * t) * (t > t[-1] / 2)
    x += 0.01 * rng.standard_normal(n)
    return np.clip(x, -0.99, 0.99)


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    """Tiny data dir: 5 utterances, wav int16 and one flac, 2 speakers."""
    audio = tmp_path / "audio"
    audio.mkdir()
    wav_scp = {}
    for k, (utt, n) in enumerate(LENGTHS.items()):
        if utt == "spkB-u2":
            p = audio / f"{utt}.flac"
            soundfile.write(p, _signal(n, k), FS, subtype="PCM_16", format="FLAC")
        else:
            p = audio / f"{utt}.wav"
            soundfile.write(p, _signal(n, k), FS, subtype="PCM_16")
        wav_scp[utt] = str(p)
    d = tmp_path / "data"
    write_data_dir(d, KaldiDataDir(
        wav_scp=wav_scp, text={u: "HELLO" for u in LENGTHS},
        utt2spk={u: u.split("-")[0] for u in LENGTHS},
        extra={"utt2voice": {u: "en" for u in LENGTHS}}))
    return d


def _read_feats(d: Path) -> Dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in kaldiio.load_scp_sequential(str(d / "feats.scp"))}


def _numpy_logmel(x: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Independent reference: reflect-padded Hann STFT, power, librosa Slaney mel, ln."""
    import librosa

    n_fft, hop = 512, 160
    xp = np.pad(x.astype(np.float64), n_fft // 2, mode="reflect")
    n_frames = 1 + (len(xp) - n_fft) // hop
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = np.stack([xp[i * hop:i * hop + n_fft] * win for i in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel = librosa.filters.mel(sr=FS, n_fft=n_fft, n_mels=n_mels, fmin=0, fmax=FS / 2,
                              htk=False).astype(np.float64)
    return np.log(np.maximum(power @ mel.T, 1e-10))


def test_features_match_frontend_and_reference(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "fbank"
    res = F.extract_features(data_dir, out, nj=1, log=lambda s: None)
    assert res["n_utts"] == 5
    feats = _read_feats(out)
    assert list(feats) == sorted(LENGTHS)  # deterministic order
    frames = {k: int(v) for k, v in
              (ln.split() for ln in (out / "utt2num_frames").read_text().splitlines())}
    fe = F.make_frontend()
    for utt, n in LENGTHS.items():
        assert feats[utt].shape == (n // 160 + 1, 80) == (frames[utt], 80)
        x, sr = soundfile.read(read_data_dir(data_dir).wav_scp[utt], dtype="float32")
        # ESPnet's own frontend, as a model with `frontend: default` would run it
        with torch.no_grad():
            ref, lens = fe(torch.from_numpy(x)[None], torch.tensor([len(x)]))
        assert np.abs(feats[utt] - ref[0].numpy()).max() < 1e-4
        # independent numpy/librosa computation (float64); log domain, loud bins
        npref = _numpy_logmel(x)
        loud = npref > np.log(1e-6)
        assert np.abs(feats[utt] - npref)[loud].max() < 2e-3
    # the data dir's own files come along; feature metadata is written
    d = read_data_dir(out)
    assert d.extra["utt2voice"]["spkA-u1"] == "en"
    assert (out / "feats_dim").read_text().strip() == "80"
    assert json.loads((out / "frontend_conf.json").read_text())["hop_length"] == 160


def test_stats_are_mean_and_var_of_written_feats(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "fbank"
    F.extract_features(data_dir, out, log=lambda s: None)
    allf = np.concatenate(list(_read_feats(out).values())).astype(np.float64)
    st = np.load(out / "feats_stats.npz")
    assert int(st["count"]) == allf.shape[0]
    np.testing.assert_allclose(st["sum"], allf.sum(0), rtol=1e-10)
    np.testing.assert_allclose(st["sum_square"], (allf ** 2).sum(0), rtol=1e-10)
    mean, var = F.read_stats(out / "feats_stats.npz")
    np.testing.assert_allclose(mean, allf.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(var, allf.var(0), rtol=1e-6, atol=1e-8)
    # ESPnet's GlobalMVN reads the file and whitens the features
    from espnet2.layers.global_mvn import GlobalMVN

    mvn = GlobalMVN(out / "feats_stats.npz")
    y, _ = mvn(torch.from_numpy(allf.astype(np.float32))[None])
    assert np.abs(y[0].mean(0).numpy()).max() < 1e-3
    assert np.abs(y[0].std(0).numpy() - 1).max() < 1e-2


def test_nj2_is_byte_identical_and_rerun_is_noop(data_dir: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    F.extract_features(data_dir, a, nj=1, log=lambda s: None)
    F.extract_features(data_dir, b, nj=2, log=lambda s: None)
    assert (a / "feats.ark").read_bytes() == (b / "feats.ark").read_bytes()
    assert (a / "feats.scp").read_text().replace(str(a), "X") == \
        (b / "feats.scp").read_text().replace(str(b), "X")
    assert (a / "feats_stats.npz").read_bytes() == (b / "feats_stats.npz").read_bytes()
    mtimes = {p: p.stat().st_mtime_ns for p in a.iterdir()}
    assert F.extract_features(data_dir, a, nj=1, log=lambda s: None)["skipped"]
    assert {p: p.stat().st_mtime_ns for p in a.iterdir()} == mtimes
    # other parameters: recomputed
    F.extract_features(data_dir, a, F.FbankConfig(n_mels=40), log=lambda s: None)
    assert next(iter(_read_feats(a).values())).shape[1] == 40


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_bad_audio_names_utterance_and_leaves_no_output(data_dir: Path, tmp_path: Path,
                                                        damage: str) -> None:
    victim = read_data_dir(data_dir).wav_scp["spkB-u1"]
    if damage == "missing":
        Path(victim).unlink()
    else:
        Path(victim).write_bytes(b"RIFF\x00\x00garbage" * 10)
    out = tmp_path / "fbank"
    with pytest.raises(F.FeatureError, match=rf"utterance 'spkB-u1'.*{Path(victim).name}"):
        F.extract_features(data_dir, out, nj=1, log=lambda s: None)
    leftovers = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert leftovers == []


def test_bad_audio_with_parallel_jobs(data_dir: Path, tmp_path: Path) -> None:
    Path(read_data_dir(data_dir).wav_scp["spkA-u2"]).unlink()
    out = tmp_path / "fbank"
    with pytest.raises(F.FeatureError, match=r"utterance 'spkA-u2'.*not found"):
        F.extract_features(data_dir, out, nj=2, log=lambda s: None)
    assert not (out / ".done").exists() and not (out / "feats.scp").exists()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*tmp"))


def test_wrong_sample_rate_is_reported(data_dir: Path, tmp_path: Path) -> None:
    p = read_data_dir(data_dir).wav_scp["spkA-u1"]
    soundfile.write(p, np.zeros(8000), 8000, subtype="PCM_16")
    with pytest.raises(F.FeatureError, match="'spkA-u1'.*sample rate 8000, expected 16000"):
        F.extract_features(data_dir, tmp_path / "f", log=lambda s: None)


def test_length_filter(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "fbank"
    F.extract_features(data_dir, out, log=lambda s: None)
    r = F.filter_by_length(out, tmp_path / "filt", min_frames=60, max_frames=200)
    # frames: u1 101, u2 52, B-u1 151, B-u2 32, B-u3 251 -> keep spkA-u1, spkB-u1
    assert r == {"kept": 2, "dropped": 3}
    d = read_data_dir(tmp_path / "filt")
    assert d.utt_ids == ["spkA-u1", "spkB-u1"]
    assert list(_read_feats(tmp_path / "filt")) == ["spkA-u1", "spkB-u1"]
    assert (tmp_path / "filt" / "spk2utt").read_text() == "spkA spkA-u1\nspkB spkB-u1\n"
    assert (tmp_path / "filt" / "feats_stats.npz").is_file()
    assert (tmp_path / "filt" / "feats_shape").read_text() == "spkA-u1 101,80\nspkB-u1 151,80\n"
    assert F.main(["filter", str(out), str(tmp_path / "f2"), "--min_frames", "100000"]) == 1
