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

Modules: :mod:`.grammar` (the grammar, package data ``grammar.json``, and sentence
sampling), :mod:`.plan` (voices, speakers, the utterance plan), :mod:`.tts` (the eSpeak
backends), :mod:`.audio` (resampling, noise, wav I/O), :mod:`.build` (the driver,
:func:`make_corpus`), :mod:`.cli` (the command line). This package re-exports their names.

Command line::

    python -m espnet_prune.data.mini_corpus --out_dir data/mini \\
        --n_train 1500 --n_dev 150 --n_test 200 --seed 0 --nj 2
"""

from __future__ import annotations

from espnet_prune.data.mini_corpus.audio import (
    SAMPLE_RATE,
    postprocess,
    resample,
    wav_num_samples,
    write_wav,
)
from espnet_prune.data.mini_corpus.build import (
    CORPUS_VERSION,
    is_complete,
    make_corpus,
)
from espnet_prune.data.mini_corpus.cli import get_parser, main
from espnet_prune.data.mini_corpus.grammar import (
    GRAMMAR,
    MAX_WORDS,
    MIN_WORDS,
    grammar_vocabulary,
    sample_sentence,
)
from espnet_prune.data.mini_corpus.plan import (
    ACCENTS,
    SPLITS,
    VARIANTS,
    CorpusConfig,
    Speaker,
    Utterance,
    make_plan,
    make_speakers,
)
from espnet_prune.data.mini_corpus.tts import (
    EspeakBinary,
    EspeakLibrary,
    SynthesisUnavailable,
    get_synthesizer,
)

__all__ = [
    "SAMPLE_RATE", "postprocess", "resample", "wav_num_samples", "write_wav",
    "CORPUS_VERSION", "is_complete",
    "make_corpus", "get_parser", "main",
    "GRAMMAR", "MAX_WORDS", "MIN_WORDS", "grammar_vocabulary",
    "sample_sentence",
    "ACCENTS", "SPLITS", "VARIANTS", "CorpusConfig", "Speaker", "Utterance", "make_plan",
    "make_speakers",
    "EspeakBinary", "EspeakLibrary", "SynthesisUnavailable", "get_synthesizer",
]
