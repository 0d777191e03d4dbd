"""Offline helpers: keep ESPnet's import from downloading nltk data or loading what ASR never uses.

ESPnet imports ``g2p_en``, which calls ``nltk.download`` for two resources
when ``nltk.data.find`` cannot see them. Empty stand-in archives are enough to
satisfy the lookup (the grapheme-to-phoneme code is never used for ASR here).

    python -m espnet_prune.offline DIR   # then: export NLTK_DATA=DIR

:func:`defer_text_frontends` makes ``import g2p_en`` and ``import inflect`` lazy: they load
on first use, which character and BPE tokenizers never make (``inflect``'s import alone
takes 4-5 s of CPU). ``import espnet_prune`` calls it, so every process of the plugin saves
that time.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
import zipfile
from pathlib import Path
from typing import Any, Callable, Tuple

_RESOURCES = ("taggers/averaged_perceptron_tagger_eng.zip", "corpora/cmudict.zip")


def ensure_nltk_stub(directory: str | Path) -> Path:
    """Create empty nltk resource archives under ``directory`` (idempotent)."""
    root = Path(directory)
    for rel in _RESOURCES:
        path = root / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".zip.tmp")
            zipfile.ZipFile(tmp, "w").close()
            tmp.replace(path)
    return root


class _Deferred(types.ModuleType):
    """Stands in for a module in ``sys.modules`` until one of its names is needed; the
    callables in ``factories`` return lazy objects instead of loading it."""

    def __init__(self, name: str, factories: Tuple[str, ...] = ()) -> None:
        super().__init__(name)
        for attr in factories:
            setattr(self, attr, functools.partial(_LazyObject, self._load, attr))

    def _load(self) -> types.ModuleType:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        try:
            return importlib.import_module(self.__name__)
        except BaseException:
            sys.modules.setdefault(self.__name__, self)
            raise

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name != "__path__":  # probes (inspect.getmodule's
            raise AttributeError(name)  # __file__) do not load it; a submodule import does
        return getattr(self._load(), name)


class _LazyObject:
    """``getattr(load(), factory)(*args, **kwargs)``, made on first attribute access."""

    def __init__(self, load: Callable[[], types.ModuleType], factory: str, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_make"] = lambda: getattr(load(), factory)(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if "_obj" not in self.__dict__:
            self.__dict__["_obj"] = self.__dict__["_make"]()
        return getattr(self.__dict__["_obj"], name)


def defer_text_frontends() -> None:
    """Defer ``g2p_en`` and ``inflect`` until first used (no-op for one already imported
    or not installed). ESPnet's text package imports both; ``g2p_en`` and
    ``tacotron_cleaner`` call ``inflect.engine()`` at import, which gets a lazy engine."""
    for name, factories in (("g2p_en", ()), ("inflect", ("engine",))):
        if name not in sys.modules and importlib.util.find_spec(name) is not None:
            sys.modules[name] = _Deferred(name, factories)


if __name__ == "__main__":
    print(ensure_nltk_stub(sys.argv[1] if len(sys.argv) > 1 else "nltk_data"))
