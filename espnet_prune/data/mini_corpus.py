"""Deterministic synthetic multi-speaker English corpus (eSpeak NG text-to-speech).

Sentences come from a small template grammar (:data:`GRAMMAR`, about 130 words: commands,
digits and numbers, colours, objects, rooms, days and times); each utterance is spoken
by one "speaker" = an eSpeak NG accent (``en-us``, ``en-gb-x-rp``, ``en-029``, ...) with
a voice variant (``+m3``, ``+f2``, ``+klatt``, ``+Andy``, ...) and its own speaking rate,
pitch and pitch range, then resampled to 16 kHz, mixed with a little white noise at a
random SNR and written as 16-bit mono PCM wav.

Guarantees (tested):

* determinism: the same arguments give byte-identical wav files and transcripts, whatever
  the number of jobs and even across interrupted/resumed runs (every utterance is
  synthesised in a freshly forked copy of a pristine synthesiser; eSpeak keeps hidden
  state between utterances otherwise);
* dev/test speakers (accent+variant combinations) never occur in train, and no
  sentence occurs in more than one utterance of the corpus;
* restartable and atomic: wavs are written to temporary names and renamed; the Kaldi
  files of a split are written after all its wavs; ``.done`` is written last. Re-running
  with the same arguments on a complete output does nothing.

Output layout (``<out>``)::

    <out>/wav/<split>/<utt>.wav
    <out>/<split>/{wav.scp,text,utt2spk,spk2utt,utt2dur,utt2voice,utt2accent,spk2voice}
    <out>/config.json   # arguments, backend and eSpeak version
    <out>/.done         # completion marker

``utt2voice`` holds the full voice (``en-us+m3``), ``utt2accent`` its accent (``en-us``,
the "voice family" to report results by), ``spk2voice`` each speaker's voice and prosody
(``en-us+m3 rate=150 pitch=40 range=60 gap=0``; the binary backend cannot set the range).

Synthesiser backends: the ``espeakng-loader`` PyPI package (bundles libespeak-ng, called
through ctypes; no root needed) or, failing that, an ``espeak-ng`` executable on PATH
(Debian package ``espeak-ng``). Determinism holds for a given backend and eSpeak version.

Command line::

    python -m espnet_prune.data.mini_corpus --out_dir data/mini \\
        --n_train 1500 --n_dev 150 --n_test 200 --seed 0 --nj 2
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import random
import select
import shutil
import struct
import subprocess
import sys
import time
import traceback
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from espnet_prune.fileio import read_marker
from espnet_prune.data.kaldi_dir import (
    KaldiDataDir,
    atomic_write_text,
    write_data_dir,
)

SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "test")
CORPUS_VERSION = 1  # bump when the generation procedure changes output

# --------------------------------------------------------------------------- grammar

#: Template grammar. Keys starting with ``$`` are non-terminals; each maps to a list of
#: alternatives (chosen uniformly); an alternative is a space separated sequence of
#: words and non-terminals, ``""`` is the empty alternative. ``$S`` is the start symbol.
#: Tune vocabulary / sentence length here (see :func:`grammar_vocabulary`).
GRAMMAR: Dict[str, List[str]] = {
    "$S": [
        "$SWITCH_CMD", "$SWITCH_CMD", "$OPEN_CMD", "$MOVE_CMD", "$MOVE_CMD", "$SET_CMD",
        "$LEVEL_CMD", "$QUERY", "$QUERY", "$DIAL", "$ALARM", "$PLAY", "$REMIND", "$FIND",
    ],
    "$PLEASE": ["", "", "PLEASE"],
    "$SWITCH_CMD": [
        "$PLEASE $SWITCH THE $DEVICE_DESC $ONOFF $WHERE",
        "$PLEASE $SWITCH $ONOFF THE $DEVICE_DESC $WHERE",
    ],
    "$SWITCH": ["TURN", "SWITCH"],
    "$ONOFF": ["ON", "OFF"],
    "$DEVICE_DESC": ["$DEVICE", "$COLOR $DEVICE", "$SIZE $DEVICE"],
    "$DEVICE": ["LIGHT", "LAMP", "RADIO", "HEATER", "FAN", "TELEVISION", "OVEN", "COMPUTER"],
    "$WHERE": ["", "IN THE $ROOM"],
    "$ROOM": ["KITCHEN", "BEDROOM", "GARDEN", "GARAGE", "OFFICE", "HALLWAY", "BATHROOM",
              "ATTIC"],
    "$OPEN_CMD": ["$PLEASE $OPEN THE $SIZE_OPT $OPENABLE $WHERE"],
    "$OPEN": ["OPEN", "CLOSE", "LOCK"],
    "$OPENABLE": ["DOOR", "WINDOW", "GATE"],
    "$SIZE_OPT": ["", "$SIZE"],
    "$MOVE_CMD": [
        "$PLEASE $MOVE THE $OBJECT_DESC TO THE $ROOM",
        "$MOVE THE $OBJECT_DESC $PREP THE $FURNITURE",
        "$MOVE MY $OBJECT TO THE $FURNITURE",
    ],
    "$MOVE": ["MOVE", "PUT", "BRING", "TAKE"],
    "$OBJECT_DESC": ["$OBJECT", "$COLOR $OBJECT", "$SIZE $COLOR $OBJECT", "$SIZE $OBJECT"],
    "$OBJECT": ["BOX", "CUP", "BOOK", "BALL", "BAG", "KEY", "PHONE", "BOTTLE"],
    "$COLOR": ["RED", "GREEN", "BLUE", "YELLOW", "BLACK", "WHITE", "ORANGE", "PURPLE"],
    "$SIZE": ["BIG", "SMALL", "OLD", "NEW"],
    "$PREP": ["ON", "UNDER", "NEAR", "BEHIND"],
    "$FURNITURE": ["TABLE", "SHELF", "BED", "SOFA", "DESK"],
    "$SET_CMD": [
        "SET THE TEMPERATURE TO $NUMBER DEGREES $WHERE",
        "SET THE VOLUME TO $NUMBER PERCENT",
        "SET A TIMER FOR $NUMBER MINUTES",
    ],
    "$LEVEL_CMD": ["$PLEASE $UPDOWN THE $SETTING $WHERE", "$UPDOWN THE $SETTING BY $NUMBER"],
    "$UPDOWN": ["RAISE", "LOWER", "TURN UP", "TURN DOWN"],
    "$SETTING": ["TEMPERATURE", "VOLUME", "HEATER", "MUSIC"],
    "$QUERY": [
        "WHERE IS THE $OBJECT_DESC",
        "WHERE IS MY $OBJECT",
        "WHAT IS THE $SETTING $WHERE",
        "IS THE $DEVICE_DESC $ONOFF",
        "WHAT TIME IS IT",
        "IS THE $OPENABLE $OPEN_STATE",
    ],
    "$OPEN_STATE": ["OPEN", "LOCKED", "CLOSED"],
    "$DIAL": [
        "$DIALVERB $DIGIT $DIGIT $DIGIT",
        "$DIALVERB $DIGIT $DIGIT $DIGIT $DIGIT",
        "$DIALVERB $DIGIT $DIGIT $DIGIT $DIGIT $DIGIT $DIGIT",
        "THE CODE IS $DIGIT $DIGIT $DIGIT $DIGIT",
    ],
    "$DIALVERB": ["DIAL", "CALL"],
    "$ALARM": [
        "WAKE ME UP AT $TIME $DAY_OPT",
        "SET AN ALARM FOR $TIME $DAY_OPT",
        "THE MEETING IS AT $TIME $DAY_OPT",
    ],
    "$PLAY": ["PLAY SOME MUSIC $WHERE", "PLAY THE NEWS $WHERE", "STOP THE $MEDIA"],
    "$MEDIA": ["MUSIC", "NEWS", "TIMER", "ALARM", "RADIO"],
    "$REMIND": ["REMIND ME TO $TASK $WHEN"],
    "$TASK": ["CALL HOME", "LOCK THE $OPENABLE", "CLOSE THE $OPENABLE",
              "TAKE MY $OBJECT", "TURN $ONOFF THE $DEVICE"],
    "$WHEN": ["AT $TIME", "$DAY_REL", "ON $DAY", "ON $DAY $PART_DAY", "IN $NUMBER_SMALL MINUTES"],
    "$FIND": ["SHOW ME THE $OBJECT_DESC", "FIND MY $OBJECT $WHERE", "WHERE DID I PUT MY $OBJECT"],
    "$TIME": ["$HOUR", "$HOUR $MINUTE", "HALF PAST $HOUR", "QUARTER PAST $HOUR",
              "QUARTER TO $HOUR", "$HOUR IN THE $PART_DAY"],
    "$PART_DAY": ["MORNING", "EVENING"],
    "$DAY_OPT": ["", "", "$DAY_REL", "ON $DAY"],
    "$DAY_REL": ["TODAY", "TOMORROW", "TONIGHT"],
    "$DAY": ["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY"],
    "$HOUR": ["ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE", "TEN",
              "ELEVEN", "TWELVE"],
    "$MINUTE": ["FIFTEEN", "THIRTY", "FORTY FIVE", "TWENTY", "TEN", "FIFTY"],
    "$NUMBER_SMALL": ["TWO", "THREE", "FIVE", "TEN", "TWENTY", "THIRTY"],
    "$NUMBER": ["$DIGIT", "$TEEN", "$TENS", "$TENS $DIGIT_NZ"],
    "$DIGIT": ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"],
    "$DIGIT_NZ": ["ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"],
    "$TEEN": ["TEN", "ELEVEN", "TWELVE", "FIFTEEN"],
    "$TENS": ["TWENTY", "THIRTY", "FORTY", "FIFTY"],
}

MIN_WORDS = 3
MAX_WORDS = 10


def _check_grammar(grammar: Dict[str, List[str]]) -> None:
    if "$S" not in grammar:
        raise ValueError("grammar has no start symbol '$S'")
    for nt, alts in grammar.items():
        if not nt.startswith("$") or not alts:
            raise ValueError(f"grammar: bad rule {nt!r}")
        for alt in alts:
            for tok in alt.split():
                if tok.startswith("$") and tok not in grammar:
                    raise ValueError(f"grammar: rule {nt} uses undefined {tok}")


def grammar_vocabulary(grammar: Dict[str, List[str]] = GRAMMAR) -> List[str]:
    """Sorted set of terminal words of ``grammar`` (every word is reachable in practice)."""
    words = set()
    for alts in grammar.values():
        for alt in alts:
            words.update(t for t in alt.split() if not t.startswith("$"))
    return sorted(words)


def sample_sentence(
    rng: random.Random,
    grammar: Dict[str, List[str]] = GRAMMAR,
    min_words: int = MIN_WORDS,
    max_words: int = MAX_WORDS,
    max_tries: int = 1000,
) -> str:
    """Draw one sentence from ``grammar`` with ``min_words..max_words`` words (rejection)."""

    def expand(sym: str, depth: int) -> List[str]:
        if depth > 50:
            raise ValueError("grammar recursion too deep")
        alt = rng.choice(grammar[sym])
        out: List[str] = []
        for tok in alt.split():
            out.extend(expand(tok, depth + 1) if tok.startswith("$") else [tok])
        return out

    for _ in range(max_tries):
        words = expand("$S", 0)
        if min_words <= len(words) <= max_words:
            return " ".join(words)
    raise ValueError(f"grammar produced no sentence of {min_words}-{max_words} words "
                     f"in {max_tries} tries")


# --------------------------------------------------------------------------- voices

#: eSpeak NG English voices ("accents"; the voice family reported per utterance).
ACCENTS: List[str] = ["en", "en-us", "en-gb-x-rp", "en-029", "en-gb-scotland",
                      "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc"]

#: Voice variants (files in espeak-ng-data/voices/!v) that sound like plain speech;
#: gimmicks (whisper, croak, robots, ...) are left out.
VARIANTS: List[str] = [
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4",
    "klatt", "klatt2", "klatt3",
    "Alex", "Andy", "Annie", "Denis", "Gene", "Jacky", "Lee", "Michael", "Mike", "Storm",
    "adam", "anika", "belinda", "benjamin", "boris", "caleb", "david", "ed", "edward",
    "iven", "john", "linda", "max", "norbert", "paul", "quincy", "rob", "robert", "steph",
    "travis", "victor", "zac",
]


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: eSpeak voice plus prosody settings.

    rate: words per minute (eSpeak ``-s``); pitch, pitch_range: 0..99 (``-p``, range);
    word_gap: extra pause between words in units of 10 ms (``-g``).
    """

    spk_id: str
    accent: str
    variant: str
    rate: int
    pitch: int
    pitch_range: int
    word_gap: int

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}"


@dataclass(frozen=True)
class Utterance:
    """One planned utterance; ``seed`` drives its noise and rate jitter."""

    utt_id: str
    split: str
    speaker: Speaker
    text: str
    seed: int


# --------------------------------------------------------------------------- synthesis backends


class SynthesisUnavailable(RuntimeError):
    """No eSpeak NG backend could be found."""


class EspeakLibrary:
    """libespeak-ng (from the ``espeakng-loader`` wheel) driven through ctypes.

    ``synthesize`` may be called from a forked child only (each child then starts from the
    same pristine engine state); the parent only initialises the library.
    """

    name = "espeakng-loader"

    # espeak_AUDIO_OUTPUT / espeak_PARAMETER / flags from speak_lib.h
    _AUDIO_OUTPUT_SYNCHRONOUS = 2
    _RATE, _VOLUME, _PITCH, _RANGE, _WORDGAP = 1, 2, 3, 4, 7
    _POS_CHARACTER = 1
    _CHARS_UTF8 = 1
    _CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                           ctypes.c_void_p)

    def __init__(self) -> None:
        try:
            import espeakng_loader  # type: ignore
        except ImportError as e:
            raise SynthesisUnavailable("python package 'espeakng-loader' is not installed") from e
        self.data_path = Path(espeakng_loader.get_data_path())
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                          ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint,
                                     ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                     ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        self._has_seed = hasattr(lib, "espeak_ng_SetRandSeed")
        if self._has_seed:
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.lib = lib
        sr = lib.espeak_Initialize(self._AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                   str(self.data_path).encode(), 0)
        if sr <= 0:
            raise SynthesisUnavailable(f"espeak_Initialize failed ({sr}) with data {self.data_path}")
        self.sample_rate = int(sr)
        self.version = lib.espeak_Info(None).decode()
        self._chunks: List[np.ndarray] = []

        def _callback(wav, n, events):  # noqa: ANN001
            if n > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._cb = self._CB(_callback)  # keep a reference
        lib.espeak_SetSynthCallback(self._cb)

    def has_voice(self, accent: str, variant: str) -> bool:
        if not hasattr(self, "_accents"):
            self._accents = {p.name.lower() for p in (self.data_path / "lang").rglob("*")
                             if p.is_file()}
        return accent.lower() in self._accents and (self.data_path / "voices" / "!v" / variant).is_file()

    def synthesize(self, text: str, spk: Speaker, rate: int, seed: int) -> np.ndarray:
        """Speak ``text``; returns int16 samples at :attr:`sample_rate`, shape (n,)."""
        lib = self.lib
        self._chunks = []
        if lib.espeak_SetVoiceByName(spk.voice.encode()) != 0:
            raise RuntimeError(f"eSpeak does not know voice {spk.voice}")
        for par, val in ((self._RATE, rate), (self._PITCH, spk.pitch),
                         (self._RANGE, spk.pitch_range), (self._WORDGAP, spk.word_gap),
                         (self._VOLUME, 100)):
            lib.espeak_SetParameter(par, int(val), 0)
        if self._has_seed:
            lib.espeak_ng_SetRandSeed(int(seed) & 0x7FFFFFFF)
        buf = text.encode("utf-8") + b"\0"
        err = lib.espeak_Synth(buf, len(buf), 0, self._POS_CHARACTER, 0, self._CHARS_UTF8,
                               None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with code {err}")
        lib.espeak_Synchronize()
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks).astype(np.int16)


class EspeakBinary:
    """The ``espeak-ng`` command line program (Debian package ``espeak-ng``)."""

    name = "espeak-ng-binary"

    def __init__(self, exe: Optional[str] = None) -> None:
        exe = exe or shutil.which("espeak-ng")
        if exe is None:
            raise SynthesisUnavailable("no 'espeak-ng' executable on PATH")
        self.exe = exe
        out = subprocess.run([exe, "--version"], capture_output=True, text=True)
        if out.returncode != 0:
            raise SynthesisUnavailable(f"{exe} --version failed: {out.stderr.strip()}")
        self.version = out.stdout.strip()
        voices = subprocess.run([exe, "--voices=variant"], capture_output=True, text=True)
        self._variants = {ln.split()[-1].split("/")[-1] for ln in voices.stdout.splitlines()[1:]
                          if ln.split()}
        langs = subprocess.run([exe, "--voices"], capture_output=True, text=True)
        self._accents = {ln.split()[1].lower() for ln in langs.stdout.splitlines()[1:]
                         if len(ln.split()) > 1}
        probe = self._run("a", "en", 175, 50, 0)
        self.sample_rate = probe[1]

    def has_voice(self, accent: str, variant: str) -> bool:
        return accent.lower() in self._accents and variant in self._variants

    def _run(self, text: str, voice: str, rate: int, pitch: int, gap: int) -> Tuple[np.ndarray, int]:
        cmd = [self.exe, "--stdout", "-v", voice, "-s", str(rate), "-p", str(pitch),
               "-g", str(gap), "-a", "100", text]
        proc = subprocess.run(cmd, capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.decode(errors='replace')}")
        data = proc.stdout
        # a streamed RIFF header has bogus sizes: read the rate from 'fmt ', then all
        # bytes after the 'data' chunk header
        fmt = data.find(b"fmt ")
        pos = data.find(b"data")
        if data[:4] != b"RIFF" or fmt < 0 or pos < 0:
            raise RuntimeError(f"{' '.join(cmd)}: output is not a wav stream")
        sr = struct.unpack("<I", data[fmt + 12:fmt + 16])[0]
        body = data[pos + 8:]
        pcm = np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2")
        return pcm.astype(np.int16), int(sr)

    def synthesize(self, text: str, spk: Speaker, rate: int, seed: int) -> np.ndarray:
        return self._run(text, spk.voice, rate, spk.pitch, spk.word_gap)[0]


def get_synthesizer(backend: str = "auto"):
    """Return a synthesiser: ``"library"`` (espeakng-loader), ``"binary"`` or ``"auto"``.

    Raises:
        SynthesisUnavailable: neither backend works (the message says how to install one).
    """
    errors = []
    if backend in ("auto", "library"):
        try:
            return EspeakLibrary()
        except (SynthesisUnavailable, OSError) as e:
            errors.append(f"library: {e}")
            if backend == "library":
                raise SynthesisUnavailable("; ".join(errors)) from e
    if backend in ("auto", "binary"):
        try:
            return EspeakBinary()
        except SynthesisUnavailable as e:
            errors.append(f"binary: {e}")
    raise SynthesisUnavailable(
        "no eSpeak NG backend available (" + "; ".join(errors) + "). Install one with "
        "'pip install espeakng-loader' or 'apt-get install espeak-ng'.")


# --------------------------------------------------------------------------- signal processing


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
    with wave.open(str(path), "rb") as w:
        return w.getnframes()


# --------------------------------------------------------------------------- planning


@dataclass
class CorpusConfig:
    """All arguments that determine the corpus content."""

    n_train: int = 1500
    n_dev: int = 150
    n_test: int = 200
    seed: int = 0
    n_train_speakers: int = 48
    n_dev_speakers: int = 8
    n_test_speakers: int = 10
    min_words: int = MIN_WORDS
    max_words: int = MAX_WORDS
    snr_low: float = 15.0
    snr_high: float = 35.0


def make_speakers(cfg: CorpusConfig, available: Callable[[str, str], bool]) -> Dict[str, List[Speaker]]:
    """Draw disjoint accent+variant combinations for train / dev / test (seeded).

    Raises:
        ValueError: fewer available voice combinations than speakers requested.
    """
    rng = random.Random(f"speakers-{cfg.seed}")
    combos = [(a, v) for a in ACCENTS for v in VARIANTS if available(a, v)]
    need = {"train": cfg.n_train_speakers, "dev": cfg.n_dev_speakers, "test": cfg.n_test_speakers}
    for split, n in need.items():
        if n < 1:
            raise ValueError(f"need at least one {split} speaker")
    if sum(need.values()) > len(combos):
        raise ValueError(f"{sum(need.values())} speakers requested but only {len(combos)} "
                         "voice combinations are available")
    rng.shuffle(combos)
    out: Dict[str, List[Speaker]] = {}
    pos = 0
    prefix = {"train": "tr", "dev": "dv", "test": "te"}
    for split in SPLITS:
        spks = []
        for k in range(need[split]):
            accent, variant = combos[pos]
            pos += 1
            spks.append(Speaker(
                spk_id=f"{prefix[split]}{k:03d}",
                accent=accent,
                variant=variant,
                rate=rng.randint(135, 195),
                pitch=rng.randint(25, 75),
                pitch_range=rng.randint(25, 85),
                word_gap=rng.choice([0, 0, 0, 1, 2]),
            ))
        out[split] = spks
    return out


def make_plan(cfg: CorpusConfig, available: Callable[[str, str], bool]) -> List[Utterance]:
    """Deterministic list of utterances (speaker, text, seed) for all splits.

    Every sentence is used once in the whole corpus, so dev/test sentences never occur in
    train; speakers are from :func:`make_speakers` (disjoint per split).
    """
    _check_grammar(GRAMMAR)
    speakers = make_speakers(cfg, available)
    rng = random.Random(f"text-{cfg.seed}")
    counts = {"train": cfg.n_train, "dev": cfg.n_dev, "test": cfg.n_test}
    total = sum(counts.values())
    seen = set()
    sentences: List[str] = []
    tries = 0
    while len(sentences) < total:
        s = sample_sentence(rng, GRAMMAR, cfg.min_words, cfg.max_words)
        tries += 1
        if s not in seen:
            seen.add(s)
            sentences.append(s)
        elif tries > 50 * total + 10000:
            raise ValueError(f"grammar cannot produce {total} distinct sentences")
    plan: List[Utterance] = []
    pos = 0
    for split in SPLITS:
        spks = speakers[split]
        order = list(range(counts[split]))
        for k in order:
            spk = spks[k % len(spks)]
            idx = k // len(spks)
            utt_id = f"{spk.spk_id}-{idx:05d}"
            seed = int.from_bytes(hashlib.sha256(f"{cfg.seed}/{utt_id}".encode()).digest()[:4],
                                  "little")
            plan.append(Utterance(utt_id, split, spk, sentences[pos], seed))
            pos += 1
    return plan


# --------------------------------------------------------------------------- fork pool


def _synth_one(synth, utt: Utterance, out_wav: Path, cfg: CorpusConfig) -> None:
    rng = np.random.default_rng(utt.seed)
    rate = int(round(utt.speaker.rate * rng.uniform(0.93, 1.07)))
    pcm = synth.synthesize(utt.text.lower(), utt.speaker, rate, utt.seed)
    if pcm.size < 0.2 * synth.sample_rate:
        raise RuntimeError(f"{utt.utt_id}: eSpeak returned {pcm.size} samples for "
                           f"{utt.text!r} with voice {utt.speaker.voice}")
    y = postprocess(pcm, synth.sample_rate, rng, (cfg.snr_low, cfg.snr_high))
    write_wav(out_wav, y)


def _run_forked(synth, jobs: List[Tuple[Utterance, Path]], cfg: CorpusConfig, nj: int,
                log: Callable[[str], None]) -> None:
    """Synthesise each job in its own forked child, at most ``nj`` at a time.

    Forking from a process whose engine never synthesised anything gives every utterance
    the same starting state (eSpeak keeps state such as its pitch-flutter phase between
    utterances), which makes output independent of order and of ``nj``.
    """
    running: Dict[int, Tuple[int, Utterance, bytearray]] = {}  # fd -> (pid, utt, msg)
    it = iter(jobs)
    done = 0
    t0 = time.time()
    failed: Optional[str] = None
    try:
        while True:
            while failed is None and len(running) < nj:
                job = next(it, None)
                if job is None:
                    break
                utt, path = job
                rfd, wfd = os.pipe()
                pid = os.fork()
                if pid == 0:  # child
                    code = 0
                    try:
                        os.close(rfd)
                        _synth_one(synth, utt, path, cfg)
                    except BaseException:  # noqa: BLE001
                        code = 1
                        try:
                            os.write(wfd, traceback.format_exc().encode()[-4000:])
                        except OSError:
                            pass
                    finally:
                        os._exit(code)
                os.close(wfd)
                running[rfd] = (pid, utt, bytearray())
            if not running:
                break
            ready, _, _ = select.select(list(running), [], [])
            for fd in ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    running[fd][2].extend(chunk)
                    continue
                pid, utt, msg = running.pop(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                code = os.waitstatus_to_exitcode(status)
                if code != 0 and failed is None:
                    tb = msg.decode(errors="replace").strip()
                    last = tb.splitlines()[-1] if tb else f"child exit status {code}"
                    failed = (f"synthesis of utterance {utt.utt_id} ({utt.text!r}, voice "
                              f"{utt.speaker.voice}) failed: {last}\n{tb}")
                done += 1
                if done % 500 == 0:
                    log(f"  {done}/{len(jobs)} utterances ({time.time() - t0:.1f} s)")
    finally:
        for fd, (pid, _, _) in list(running.items()):  # only on errors / interrupts
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            os.close(fd)
    if failed is not None:
        raise RuntimeError(failed)


# --------------------------------------------------------------------------- driver


def _config_record(cfg: CorpusConfig, synth) -> Dict[str, object]:
    return {
        "corpus_version": CORPUS_VERSION,
        "config": asdict(cfg),
        "backend": synth.name,
        "espeak_version": synth.version,
        "grammar_sha1": hashlib.sha1(json.dumps(GRAMMAR, sort_keys=True).encode()).hexdigest(),
        "accents": ACCENTS,
        "variants": VARIANTS,
    }


def is_complete(out_dir: Path, cfg: CorpusConfig) -> bool:
    """True when ``out_dir`` holds a finished corpus made with exactly ``cfg``."""
    rec = read_marker(out_dir)
    if rec is None:
        return False
    return rec.get("config") == asdict(cfg) and rec.get("corpus_version") == CORPUS_VERSION


def make_corpus(
    out_dir: str | os.PathLike,
    cfg: Optional[CorpusConfig] = None,
    nj: int = 2,
    backend: str = "auto",
    overwrite: bool = False,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> Dict[str, object]:
    """Synthesise the corpus into ``out_dir`` (see module docstring for the layout).

    Args:
        cfg: corpus content parameters (sizes, seed, speakers, lengths, SNR range).
        nj: number of utterances synthesised in parallel (forked processes).
        backend: ``auto`` | ``library`` | ``binary``.
        overwrite: allow replacing an output made with different arguments.

    Returns:
        Summary dict: ``skipped`` (True when already complete), ``synthesised`` (count),
        ``seconds``, ``n_utts`` per split.

    Raises:
        FileExistsError: ``out_dir`` holds a corpus made with other arguments and
            ``overwrite`` is False.
        SynthesisUnavailable: no eSpeak NG backend.
    """
    cfg = cfg or CorpusConfig()
    out = Path(out_dir).resolve()
    t0 = time.time()
    if is_complete(out, cfg):
        log(f"{out}: complete, nothing to do")
        return {"skipped": True, "synthesised": 0, "seconds": 0.0}
    synth = get_synthesizer(backend)
    record = _config_record(cfg, synth)
    cfg_file = out / "config.json"
    if cfg_file.is_file():
        try:
            old = json.loads(cfg_file.read_text())
        except json.JSONDecodeError:
            old = None
        same = old is not None and all(old.get(k) == record[k] for k in record)
        if not same:
            if not overwrite:
                raise FileExistsError(
                    f"{out} holds a corpus made with other arguments/backend ({cfg_file}); "
                    "use another --out_dir or --overwrite")
            log(f"{out}: removing a corpus made with other arguments")
            for sub in ("wav", *SPLITS):
                shutil.rmtree(out / sub, ignore_errors=True)
            for f in (".done", "config.json"):
                (out / f).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / ".done").unlink(missing_ok=True)
    atomic_write_text(cfg_file, json.dumps(record, indent=2, sort_keys=True) + "\n")

    plan = make_plan(cfg, synth.has_voice)
    jobs: List[Tuple[Utterance, Path]] = []
    for split in SPLITS:
        wdir = out / "wav" / split
        wdir.mkdir(parents=True, exist_ok=True)
        for stale in wdir.glob(".*.tmp"):  # leftovers of an interrupted run
            stale.unlink()
    for utt in plan:
        path = out / "wav" / utt.split / f"{utt.utt_id}.wav"
        if not path.is_file():
            jobs.append((utt, path))
    log(f"{out}: {len(plan)} utterances planned, {len(jobs)} to synthesise "
        f"({synth.name}, {synth.version}, nj={nj})")
    t_syn = time.time()
    import scipy.signal  # noqa: F401  (import once here, not in every forked child)

    _run_forked(synth, jobs, cfg, max(1, nj), log)
    t_syn = time.time() - t_syn

    n_utts = {}
    for split in SPLITS:
        utts = [u for u in plan if u.split == split]
        wav_scp, text, utt2spk, utt2dur, utt2voice, utt2accent = {}, {}, {}, {}, {}, {}
        for u in utts:
            path = out / "wav" / split / f"{u.utt_id}.wav"
            wav_scp[u.utt_id] = str(path)
            text[u.utt_id] = u.text
            utt2spk[u.utt_id] = u.speaker.spk_id
            utt2dur[u.utt_id] = wav_num_samples(path) / SAMPLE_RATE
            utt2voice[u.utt_id] = u.speaker.voice
            utt2accent[u.utt_id] = u.speaker.accent
        spk2voice = {s.spk_id: f"{s.voice} rate={s.rate} pitch={s.pitch} "
                     f"range={s.pitch_range} gap={s.word_gap}"
                     for s in {u.speaker for u in utts}}
        data = KaldiDataDir(wav_scp=wav_scp, text=text, utt2spk=utt2spk, utt2dur=utt2dur,
                            extra={"utt2voice": utt2voice, "utt2accent": utt2accent,
                                   "spk2voice": spk2voice})
        write_data_dir(out / split, data)
        n_utts[split] = len(utts)
    seconds = time.time() - t0
    done = dict(record)
    done.update({"n_utts": n_utts, "synthesis_seconds": round(t_syn, 2),
                 "synthesised": len(jobs)})
    atomic_write_text(out / ".done", json.dumps(done, indent=2, sort_keys=True) + "\n")
    log(f"{out}: done, {len(jobs)} utterances synthesised in {t_syn:.1f} s "
        f"(total {seconds:.1f} s)")
    return {"skipped": False, "synthesised": len(jobs), "seconds": seconds,
            "synthesis_seconds": t_syn, "n_utts": n_utts}


def get_parser() -> argparse.ArgumentParser:
    d = CorpusConfig()
    p = argparse.ArgumentParser(description="Synthesise the mini ASR corpus (eSpeak NG).")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--n_train", type=int, default=d.n_train)
    p.add_argument("--n_dev", type=int, default=d.n_dev)
    p.add_argument("--n_test", type=int, default=d.n_test)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--n_train_speakers", type=int, default=d.n_train_speakers)
    p.add_argument("--n_dev_speakers", type=int, default=d.n_dev_speakers)
    p.add_argument("--n_test_speakers", type=int, default=d.n_test_speakers)
    p.add_argument("--min_words", type=int, default=d.min_words)
    p.add_argument("--max_words", type=int, default=d.max_words)
    p.add_argument("--snr_low", type=float, default=d.snr_low, help="dB")
    p.add_argument("--snr_high", type=float, default=d.snr_high, help="dB")
    p.add_argument("--nj", type=int, default=2, help="parallel synthesis processes")
    p.add_argument("--backend", default="auto", choices=["auto", "library", "binary"])
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output made with different arguments")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    cfg = CorpusConfig(
        n_train=args.n_train, n_dev=args.n_dev, n_test=args.n_test, seed=args.seed,
        n_train_speakers=args.n_train_speakers, n_dev_speakers=args.n_dev_speakers,
        n_test_speakers=args.n_test_speakers, min_words=args.min_words,
        max_words=args.max_words, snr_low=args.snr_low, snr_high=args.snr_high,
    )
    try:
        make_corpus(args.out_dir, cfg, nj=args.nj, backend=args.backend,
                    overwrite=args.overwrite)
    except (SynthesisUnavailable, FileExistsError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
