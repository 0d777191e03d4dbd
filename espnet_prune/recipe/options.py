"""Command-line values shared by the recipe's tools."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple


def parse_named_paths(specs: Sequence[str], option: str, value: str = "PATH"
                      ) -> List[Tuple[str, Path]]:
    """``NAME=PATH`` values of a repeatable ``option`` -> ``[(name, path)]`` in order.

    Raises:
        ValueError: a value without ``=``, an empty name or path, or a name given twice
            (the message names ``option`` and the value; ``value`` is the word shown
            for the path part, e.g. ``DIR``).
    """
    out: List[Tuple[str, Path]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise ValueError(f"{option} {spec!r}: expected NAME={value}")
        if any(n == name for n, _ in out):
            raise ValueError(f"{option} {spec!r}: name {name!r} given twice")
        out.append((name, Path(path)))
    return out
