"""Deferred imports: ESPnet's text front ends load on first use, not at ``import espnet2``.

ESPnet's text package imports ``g2p_en`` and ``inflect`` (through ``tacotron_cleaner``);
``inflect``'s import alone takes 4-5 s of CPU, and character or BPE tokenizers never use
either. :func:`defer_text_frontends` puts stand-ins in ``sys.modules`` that load the real
module when one of its names is first used (``inflect.engine()`` returns a lazy engine, since
both users call it at import). ``import espnet_prune`` calls it, so every process of the
plugin (training, decoding, tests) starts that much sooner.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from typing import Any, Callable, Tuple


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
