"""The mini corpus's sentence grammar: loaded from ``grammar.json``, checked and sampled.

The grammar (about 130 words: commands, digits and numbers, colours, objects, rooms, days
and times) is package data, :data:`GRAMMAR`. Keys starting with ``$`` are non-terminals;
each maps to a list of alternatives (chosen uniformly); an alternative is a space
separated sequence of words and non-terminals, ``""`` is the empty alternative. ``$S`` is
the start symbol. Tune vocabulary / sentence length in ``grammar.json`` (see
:func:`grammar_vocabulary`); any change changes the corpus.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Dict, List

GRAMMAR_FILE = Path(__file__).with_name("grammar.json")

#: Template grammar (non-terminal -> alternatives), in file order.
GRAMMAR: Dict[str, List[str]] = json.loads(GRAMMAR_FILE.read_text(encoding="utf-8"))

MIN_WORDS = 3
MAX_WORDS = 10


def check_grammar(grammar: Dict[str, List[str]]) -> None:
    """Raise ValueError unless ``grammar`` has ``$S`` and every non-terminal it uses."""
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
