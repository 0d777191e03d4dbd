"""Planning the mini corpus: voices, speakers per split and the list of utterances.

Everything here is a pure function of a :class:`CorpusConfig` (and of which voices the
synthesiser has): :func:`make_plan` draws each split's speakers (disjoint accent+variant
combinations) and one distinct sentence per utterance, and gives each utterance a seed
for its noise and rate jitter.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Callable, Dict, List

from espnet_prune.data.mini_corpus.grammar import (
    GRAMMAR,
    MAX_WORDS,
    MIN_WORDS,
    check_grammar,
    sample_sentence,
)

SPLITS = ("train", "dev", "test")


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
    check_grammar(GRAMMAR)
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

