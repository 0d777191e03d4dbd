"""Out-of-distribution test sets of the mini corpus: unseen voices and speaking rates, and a
reverberant, noisy copy of them.

The in-domain test set shares the training set's voice families, speaking rates and light
white noise, so it can hide what a smaller model loses. These sets do not:

* ``ood``: speakers whose accent+variant combination no split of the corpus uses, speaking
  outside the corpus' rate range (slow 90-115 or fast 226-250 words per minute, with the
  corpus' +-7 % jitter 84-123 or 210-268, against the corpus' 126-209) and outside its pitch range (5-20 or 80-95, against
  25-75); sentences from the same grammar that no utterance of the corpus uses; the corpus'
  post-processing (white noise at 15-35 dB SNR, random gain).
* ``ood_noisy``: the same utterances, convolved with a synthetic room impulse response
  (exponentially decaying Gaussian noise after a direct path, RT60 drawn from 0.3-0.7 s) and
  mixed with pink (1/f) noise at an SNR drawn from 5-10 dB (signal power measured after the
  reverberation).

Output (beside the corpus, so ``data/mini/ood`` is a test set like ``data/mini/test``)::

    <corpus>/wav/{ood,ood_noisy}/<utt>.wav
    <corpus>/{ood,ood_noisy}/{wav.scp,text,utt2spk,spk2utt,utt2dur,utt2voice,utt2accent,spk2voice}
    <corpus>/ood.done        # marker with the options, written last

Deterministic (byte-identical for the same options, backend and eSpeak version, whatever
``nj``), restartable (missing wavs only) and atomic like the corpus itself.

Command line::

    python -m espnet_prune.data.mini_corpus.ood --corpus_dir data/mini --n_utts 400 --nj 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from espnet_prune.data.mini_corpus.audio import SAMPLE_RATE, write_wav
from espnet_prune.data.mini_corpus.build import (
    CORPUS_VERSION,
    is_complete,
    run_synthesis,
    write_kaldi_dir,
)
from espnet_prune.data.mini_corpus.grammar import GRAMMAR, sample_sentence
from espnet_prune.data.mini_corpus.plan import (
    ACCENTS,
    VARIANTS,
    CorpusConfig,
    Speaker,
    Utterance,
    make_plan,
    make_speakers,
)
from espnet_prune.data.mini_corpus.tts import SynthesisUnavailable, get_synthesizer
from espnet_prune.fileio import atomic_write_text, read_marker, write_marker

OOD_SETS = ("ood", "ood_noisy")
MARKER = "ood.done"


@dataclass(frozen=True)
class OodConfig:
    """What the out-of-distribution sets hold; rates in words per minute, RT60 in seconds,
    SNRs in dB."""

    n_utts: int = 400
    n_speakers: int = 8
    seed: int = 0
    slow_rate: Tuple[int, int] = (90, 115)
    fast_rate: Tuple[int, int] = (226, 250)
    low_pitch: Tuple[int, int] = (5, 20)
    high_pitch: Tuple[int, int] = (80, 95)
    rt60: Tuple[float, float] = (0.3, 0.7)
    noisy_snr: Tuple[float, float] = (5.0, 10.0)


def ood_speakers(corpus: CorpusConfig, cfg: OodConfig,
                 available: Callable[[str, str], bool]) -> List[Speaker]:
    """Speakers with voice combinations no split of ``corpus`` uses, alternately slow and
    fast, low- and high-pitched (seeded).

    Raises:
        ValueError: fewer unused voice combinations than ``cfg.n_speakers``.
    """
    used = {(s.accent, s.variant) for spks in make_speakers(corpus, available).values()
            for s in spks}
    free = [(a, v) for a in ACCENTS for v in VARIANTS if available(a, v) and (a, v) not in used]
    if cfg.n_speakers < 1 or cfg.n_speakers > len(free):
        raise ValueError(f"n_speakers={cfg.n_speakers}: between 1 and the {len(free)} voice "
                         "combinations the corpus does not use")
    rng = random.Random(f"ood-speakers-{cfg.seed}")
    rng.shuffle(free)
    out = []
    for k, (accent, variant) in enumerate(free[:cfg.n_speakers]):
        rate = cfg.slow_rate if k % 2 == 0 else cfg.fast_rate
        pitch = cfg.low_pitch if (k // 2) % 2 == 0 else cfg.high_pitch
        out.append(Speaker(spk_id=f"od{k:03d}", accent=accent, variant=variant,
                           rate=rng.randint(*rate), pitch=rng.randint(*pitch),
                           pitch_range=rng.randint(10, 99), word_gap=rng.choice([0, 0, 1, 3])))
    return out


def ood_plan(corpus: CorpusConfig, cfg: OodConfig,
             available: Callable[[str, str], bool]) -> List[Utterance]:
    """The ``ood`` utterances: unseen speakers (round-robin) and sentences no utterance of
    the corpus uses.

    Raises:
        ValueError: the grammar cannot give ``cfg.n_utts`` new sentences.
    """
    seen = {u.text for u in make_plan(corpus, available)}
    speakers = ood_speakers(corpus, cfg, available)
    rng = random.Random(f"ood-text-{cfg.seed}")
    plan: List[Utterance] = []
    tries = 0
    while len(plan) < cfg.n_utts:
        text = sample_sentence(rng, GRAMMAR, corpus.min_words, corpus.max_words)
        tries += 1
        if tries > 50 * cfg.n_utts + 10000:
            raise ValueError(f"the grammar cannot give {cfg.n_utts} sentences the corpus does not use")
        if text in seen:
            continue
        seen.add(text)
        k = len(plan)
        spk = speakers[k % len(speakers)]
        utt_id = f"{spk.spk_id}-{k // len(speakers):05d}"
        seed = int.from_bytes(hashlib.sha256(f"ood{cfg.seed}/{utt_id}".encode()).digest()[:4], "little")
        plan.append(Utterance(utt_id, "ood", spk, text, seed))
    return plan


# ----------------------------------------------------------------------------- the noisy copy


def room_impulse_response(rt60: float, rng: np.random.Generator,
                          sr: int = SAMPLE_RATE) -> np.ndarray:
    """A synthetic room impulse response (n,): a unit direct path, then Gaussian noise
    from 2.5 ms on whose energy decays by 60 dB in ``rt60`` seconds; unit energy."""
    n = int(rt60 * sr)
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-3.0 * np.log(10.0) * t / rt60)
    tail[: int(0.0025 * sr)] = 0.0
    h = 0.3 * tail / max(float(np.sqrt(np.sum(tail ** 2))), 1e-12)
    h[0] = 1.0
    return h / float(np.sqrt(np.sum(h ** 2)))


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise (n,) whose power spectral density falls as 1/f (above 20 Hz)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    spec /= np.sqrt(np.maximum(f, 20.0))
    x = np.fft.irfft(spec, n)
    return x / max(float(np.sqrt(np.mean(x ** 2))), 1e-12)


def degrade(x: np.ndarray, seed: int, cfg: OodConfig) -> Tuple[np.ndarray, float, float]:
    """Reverberate and add pink noise to int16 samples (n,); returns int16 samples
    (n + reverberation tail,), the RT60 (s) and the SNR (dB) drawn for ``seed``."""
    from scipy.signal import fftconvolve

    rng = np.random.default_rng(seed)
    rt60 = float(rng.uniform(*cfg.rt60))
    snr = float(rng.uniform(*cfg.noisy_snr))
    y = fftconvolve(x.astype(np.float64) / 32768.0, room_impulse_response(rt60, rng))
    power = float(np.mean(y ** 2))
    y = y + pink_noise(y.size, rng) * np.sqrt(max(power, 1e-10) / 10 ** (snr / 10))
    y *= 10 ** (-3.0 / 20) / max(float(np.max(np.abs(y))), 1e-12)  # peak at -3 dBFS
    return np.clip(np.round(y * 32767.0), -32768, 32767).astype(np.int16), rt60, snr


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


# ----------------------------------------------------------------------------- the driver


def make_ood(corpus_dir: str | Path, cfg: OodConfig = OodConfig(), nj: int = 2,
             backend: str = "auto",
             log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> Dict[str, object]:
    """Write the ``ood`` and ``ood_noisy`` sets beside the finished corpus ``corpus_dir``.

    Returns:
        ``skipped`` (True when already complete with ``cfg``) and ``synthesised`` (count).

    Raises:
        FileNotFoundError: ``corpus_dir`` holds no finished corpus.
        SynthesisUnavailable: no eSpeak NG backend.
    """
    out = Path(corpus_dir).resolve()
    corpus_rec = read_marker(out)
    if corpus_rec is None or "config" not in corpus_rec:
        raise FileNotFoundError(f"{out}: no finished mini corpus (its .done marker is missing); "
                                "make the corpus first")
    corpus = CorpusConfig(**corpus_rec["config"])
    if not is_complete(out, corpus):
        raise FileNotFoundError(f"{out}: corpus version {corpus_rec.get('corpus_version')} is not "
                                f"{CORPUS_VERSION}; make the corpus again")
    record = json.loads(json.dumps({  # as the marker reads back (tuples become lists)
        "ood": asdict(cfg), "corpus": corpus_rec["config"],
        "espeak_version": corpus_rec.get("espeak_version"), "backend": corpus_rec.get("backend")}))
    if read_marker(out, MARKER) == record:
        log(f"{out}: ood sets complete, nothing to do")
        return {"skipped": True, "synthesised": 0}
    (out / MARKER).unlink(missing_ok=True)
    synth = get_synthesizer(backend)
    if synth.name != corpus_rec.get("backend") or synth.version != corpus_rec.get("espeak_version"):
        raise SynthesisUnavailable(
            f"{out} was made with {corpus_rec.get('backend')} {corpus_rec.get('espeak_version')}, "
            f"this machine has {synth.name} {synth.version}: the ood voices would not match")
    plan = ood_plan(corpus, cfg, synth.has_voice)
    for name in OOD_SETS:
        (out / "wav" / name).mkdir(parents=True, exist_ok=True)
        for stale in (out / "wav" / name).glob(".*.tmp"):
            stale.unlink()
    # a changed option may change every wav: start the sets afresh unless only resuming
    prev = read_marker(out / "wav", ".ood_options")
    if prev is not None and prev != record:
        for name in OOD_SETS:
            for f in (out / "wav" / name).glob("*.wav"):
                f.unlink()
    atomic_write_text(out / "wav" / ".ood_options", json.dumps(record, sort_keys=True) + "\n")
    jobs = [(u, out / "wav" / "ood" / f"{u.utt_id}.wav") for u in plan
            if not (out / "wav" / "ood" / f"{u.utt_id}.wav").is_file()]
    log(f"{out}: {len(plan)} ood utterances, {len(jobs)} to synthesise")
    # the corpus' own post-processing (light white noise) on the unseen voices
    run_synthesis(synth, jobs, corpus, max(1, nj), log)
    rt60s, snrs = {}, {}
    for u in plan:
        y, rt60, snr = degrade(_read_wav(out / "wav" / "ood" / f"{u.utt_id}.wav"), u.seed + 1, cfg)
        noisy = out / "wav" / "ood_noisy" / f"{u.utt_id}.wav"
        if not noisy.is_file():
            write_wav(noisy, y)
        rt60s[u.utt_id], snrs[u.utt_id] = f"{rt60:.3f}", f"{snr:.2f}"
    write_kaldi_dir(out, "ood", plan)
    write_kaldi_dir(out, "ood_noisy", plan, {"utt2rt60": rt60s, "utt2snr": snrs})
    write_marker(out, record, MARKER)
    log(f"{out}: ood sets ready ({len(plan)} utterances each)")
    return {"skipped": False, "synthesised": len(jobs)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    d = OodConfig()
    p = argparse.ArgumentParser(prog="python -m espnet_prune.data.mini_corpus.ood",
                                description="Out-of-distribution test sets of the mini corpus.")
    p.add_argument("--corpus_dir", required=True, help="a finished mini corpus (data/mini)")
    p.add_argument("--n_utts", type=int, default=d.n_utts)
    p.add_argument("--n_speakers", type=int, default=d.n_speakers)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--nj", type=int, default=2)
    p.add_argument("--backend", default="auto", choices=["auto", "library", "binary"])
    args = p.parse_args(argv)
    try:
        make_ood(args.corpus_dir, OodConfig(n_utts=args.n_utts, n_speakers=args.n_speakers,
                                            seed=args.seed), nj=args.nj, backend=args.backend)
    except (SynthesisUnavailable, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
