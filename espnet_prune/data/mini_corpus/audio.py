"""Signal processing and wav I/O of the mini corpus: resampling, noise, gain, 16-bit PCM."""

from __future__ import annotations

import os
import wave
from pathlib import Path
from typing import Tuple

import numpy as np

SAMPLE_RATE = 16000


def resample(x: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling of a float signal (n,) from ``sr_in`` to ``sr_out`` Hz."""
    if sr_in == sr_out:
        return x.astype(np.float64)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(sr_in, sr_out)
    return resample_poly(x.astype(np.float64), sr_out // g, sr_in // g)


def postprocess(pcm: np.ndarray, sr_in: int, rng: np.random.Generator,
                snr_db: Tuple[float, float] = (15.0, 35.0)) -> np.ndarray:
    """Resample to 16 kHz, add white noise at a random SNR and random gain; int16 (n,).

    Leading/trailing silence is trimmed to at most 0.15..0.35 s (random) on each side.
    """
    x = resample(pcm.astype(np.float64) / 32768.0, sr_in, SAMPLE_RATE)
    # trim long silences eSpeak adds at the end, keep a random margin
    active = np.flatnonzero(np.abs(x) > 1e-3)
    if active.size:
        lo = max(0, active[0] - int(rng.uniform(0.05, 0.2) * SAMPLE_RATE))
        hi = min(x.size, active[-1] + int(rng.uniform(0.1, 0.3) * SAMPLE_RATE))
        x = x[lo:hi]
    sig_pow = float(np.mean(x ** 2)) if x.size else 0.0
    snr = rng.uniform(*snr_db)
    noise = rng.standard_normal(x.size) * np.sqrt(max(sig_pow, 1e-10) / (10 ** (snr / 10)))
    y = x + noise
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    target = 10 ** (rng.uniform(-12.0, -2.0) / 20)  # peak level in dBFS
    if peak > 0:
        y = y * (target / peak)
    return np.clip(np.round(y * 32767.0), -32768, 32767).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """Write int16 mono samples (n,) as a PCM wav atomically (temp name, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(samples.astype("<i2").tobytes())
    os.replace(tmp, path)


def wav_num_samples(path: Path) -> int:
    """Number of samples (per channel) in the wav file ``path``."""
    with wave.open(str(path), "rb") as w:
        return w.getnframes()

