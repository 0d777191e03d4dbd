"""eSpeak NG text-to-speech backends of the mini corpus.

Two backends: the ``espeakng-loader`` PyPI package (bundles libespeak-ng, called through
ctypes; no root needed), :class:`EspeakLibrary`, or, failing that, an ``espeak-ng``
executable on PATH (Debian package ``espeak-ng``), :class:`EspeakBinary`.
:func:`get_synthesizer` picks one. Determinism holds for a given backend and eSpeak
version.
"""

from __future__ import annotations

import ctypes
import shutil
import struct
import subprocess
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from espnet_prune.data.mini_corpus.plan import Speaker


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


#: Either backend: ``name``, ``version``, ``sample_rate`` (Hz), ``has_voice``, ``synthesize``.
Synthesizer = Union[EspeakLibrary, EspeakBinary]


def get_synthesizer(backend: str = "auto") -> Synthesizer:
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

