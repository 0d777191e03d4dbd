"""Typeguard's instrumented functions, kept on disk between processes (as ``.pyc`` files are).

ESPnet decorates about 230 functions with typeguard's ``@typechecked``, and typeguard
instruments each one when its module is imported by parsing, transforming and compiling that
*whole module* again: about 3 of the 5.7 s of CPU that ``import espnet2.tasks.asr`` takes,
paid again by every training, decoding and shrinking process. :func:`install` wraps
typeguard's ``instrument`` so that the code object it makes is saved, one file per source
file, stamped with that file's size and modification time; a later process loads it
(``marshal``) instead of making it again. The function it gets is the one typeguard builds:
the same code object, globals, closure, defaults and annotations, so every type check runs
and fails as before.

The files go to ``$ESPNET_PRUNE_TYPEGUARD_CACHE``, else ``$XDG_CACHE_HOME/espnet_prune/typeguard``
(``~/.cache/espnet_prune/typeguard``), one name per Python, typeguard and typing_extensions
version; ``ESPNET_PRUNE_TYPEGUARD_CACHE=off`` turns the cache off. A directory that cannot be
written, or a damaged file, only means the work is done again.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import sys
from pathlib import Path
from types import CellType, CodeType, FunctionType
from typing import Any, Callable, Dict, Optional, Tuple

from espnet_prune.fileio import atomic_write_bytes

#: a source file's (size in bytes, modification time in ns)
Stamp = Tuple[int, int]

ENV = "ESPNET_PRUNE_TYPEGUARD_CACHE"


def cache_dir() -> Optional[Path]:
    """Where the files go (read from the environment at each call); None when turned off."""
    value = os.environ.get(ENV, "")
    if value.lower() == "off":
        return None
    if value:
        return Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "espnet_prune" / "typeguard"


def _stamp(filename: str) -> Optional[Stamp]:
    try:
        st = os.stat(filename)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _cell(value: Any) -> CellType:
    return (lambda: value).__closure__[0]  # type: ignore[index]


class CachedInstrument:
    """Stands in for ``typeguard._decorators.instrument(f)``: the instrumented function, or
    typeguard's string saying why ``f`` cannot be instrumented."""

    def __init__(self, instrument: Callable[[Any], Any], tag: str) -> None:
        self.instrument = instrument  # typeguard's own
        self.tag = tag  # versions the code objects depend on
        #: cache file -> (its source file's stamp, {"qualname:first line": instrumented code})
        self._files: Dict[Path, Tuple[Stamp, Dict[str, CodeType]]] = {}

    def __call__(self, f: Any) -> Any:
        code = getattr(f, "__code__", None)
        stamp = _stamp(code.co_filename) if isinstance(code, CodeType) else None
        directory = cache_dir()
        path: Optional[Path] = None
        entries: Dict[str, CodeType] = {}
        if stamp is not None and directory is not None and getattr(f, "__module__", None) \
                and not hasattr(f, "__wrapped__"):  # else typeguard's own answer, not kept
            path = directory / (hashlib.sha1(f"{self.tag}\0{code.co_filename}".encode()).hexdigest() + ".marshal")
            entries = self._entries(path, stamp)
        key = f"{f.__qualname__}:{code.co_firstlineno}" if path is not None else ""
        new_code = entries.get(key)
        if new_code is None:
            made = self.instrument(f)
            if not isinstance(made, FunctionType):
                return made
            new_code = made.__code__
            if path is not None:
                entries[key] = new_code
                self._save(path, stamp, entries)
            if new_code.co_freevars == f.__code__.co_freevars:
                return made
        if new_code.co_freevars == f.__code__.co_freevars:
            return self._function(f, new_code, {})
        # names the instrumented code takes from the enclosing function: typeguard reads them
        # two frames above its own, one frame short behind this wrapper; the scope is here
        return self._function(f, new_code, sys._getframe(2).f_locals)  # above typechecked

    def _entries(self, path: Path, stamp: Stamp) -> Dict[str, CodeType]:
        """The code objects saved for one source file as it is now (``stamp``)."""
        kept = self._files.get(path)
        if kept is None or kept[0] != stamp:
            entries: Dict[str, CodeType] = {}
            try:
                saved_stamp, saved = marshal.loads(path.read_bytes())
                if tuple(saved_stamp) == stamp and isinstance(saved, dict):
                    entries = saved
            except (OSError, EOFError, ValueError, TypeError):
                pass
            kept = self._files[path] = (stamp, entries)
        return kept[1]

    @staticmethod
    def _save(path: Path, stamp: Stamp, entries: Dict[str, CodeType]) -> None:
        try:
            atomic_write_bytes(path, marshal.dumps((stamp, entries)))
        except OSError:
            pass  # not kept: the next process instruments again

    @staticmethod
    def _function(f: FunctionType, code: CodeType, scope: Dict[str, Any]) -> FunctionType:
        """``f`` with the instrumented ``code``, built as typeguard builds it. A free variable
        that ``f`` lacks (a name its annotations take from an enclosing function) is bound to
        that name's value in ``scope``, the locals of the code defining ``f``."""
        closure = f.__closure__
        if code.co_freevars != f.__code__.co_freevars:
            from typing import ForwardRef

            old = f.__code__.co_freevars
            closure = tuple(f.__closure__[old.index(name)] if name in old  # type: ignore[index]
                            else _cell(scope.get(name) or ForwardRef(name)) for name in code.co_freevars)
        new = FunctionType(code, f.__globals__, f.__name__, closure=closure)
        new.__module__ = f.__module__
        new.__qualname__ = f.__qualname__
        new.__doc__ = f.__doc__
        new.__defaults__ = f.__defaults__
        new.__kwdefaults__ = f.__kwdefaults__
        if sys.version_info >= (3, 12):
            new.__type_params__ = f.__type_params__
        if sys.version_info >= (3, 14):
            new.__annotate__ = f.__annotate__
        else:
            new.__annotations__ = f.__annotations__
        return new


def install() -> bool:
    """Wrap typeguard's ``instrument`` in a :class:`CachedInstrument` (idempotent); False, and
    typeguard left as it is, when it is missing or not the 4.x series this follows."""
    try:
        from importlib.metadata import version

        from typeguard import _decorators

        versions = version("typeguard"), version("typing_extensions")
    except ImportError:  # PackageNotFoundError included
        return False
    instrument = getattr(_decorators, "instrument", None)
    if isinstance(instrument, CachedInstrument):
        return True
    if instrument is None or not versions[0].startswith("4."):
        return False
    _decorators.instrument = CachedInstrument(
        instrument, f"{sys.implementation.cache_tag}-typeguard{versions[0]}-te{versions[1]}")
    return True
