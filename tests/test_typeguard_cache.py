"""typeguard's instrumentation kept on disk (espnet_prune.typeguard_cache): a function made
from the cache is the one typeguard makes (same code, closure, defaults), checks and fails
the same; a changed source or a damaged file is instrumented again."""

from __future__ import annotations

import importlib.util
import marshal
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import FunctionType

import pytest
from typeguard import TypeCheckError, _decorators

from espnet_prune import typeguard_cache
from espnet_prune.typeguard_cache import CachedInstrument

#: every kind of function typeguard's class and function decorators instrument
SOURCE = '''
from typing import List, Optional
from typeguard import typechecked

SCALE = 3


@typechecked
def scale(x: int, factor: int = SCALE, *, name: Optional[str] = None) -> int:
    """Scaled."""
    return x * factor


@typechecked
class Box:
    def __init__(self, items: List[int]) -> None:
        self.items = items

    def total(self, start: int = 0) -> int:
        return start + sum(self.items)

    @classmethod
    def of(cls, n: int) -> "Box":
        return cls(list(range(n)))

    @staticmethod
    def double(x: float) -> float:
        return 2 * x

    @property
    def first(self) -> int:
        return self.items[0]


def make(offset):
    class Local:
        pass

    @typechecked
    def pick(x: Local, y: int = 1) -> Local:
        assert y + offset >= 0
        return x

    return pick, Local
'''


def _import(path: Path, name: str, monkeypatch):
    """Import ``path`` as module ``name`` (in sys.modules until the test ends: typeguard reads
    the source of a nested function's module when it is defined)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def _functions(module) -> dict:
    """qualname -> the instrumented function object."""
    pick, _ = module.make(0)
    box = module.Box
    return {f.__qualname__: f for f in (module.scale, box.__init__, box.total, box.of.__func__,
                                        box.double, box.first.fget, pick)}


@pytest.fixture
def with_instrument(monkeypatch, tmp_path):
    """Import ``SOURCE`` (written to ``tmp_path``) with a given ``instrument``."""
    path = tmp_path / "tg_probe.py"
    path.write_text(SOURCE)
    monkeypatch.setenv(typeguard_cache.ENV, str(tmp_path / "cache"))
    plain = _decorators.instrument
    if isinstance(plain, CachedInstrument):
        plain = plain.instrument
    count = iter(range(100))

    def load(instrument):
        """The module imported with ``instrument``, which stays typeguard's until the next
        load (a nested function is instrumented each time its ``def`` runs)."""
        monkeypatch.setattr(_decorators, "instrument", instrument)
        module = _import(path, f"tg_probe_{next(count)}", monkeypatch)
        module.make(0)
        return module

    return load, plain, path


def _cached(plain, made=None) -> CachedInstrument:
    """A cache over typeguard's ``plain`` instrument; what ``plain`` makes is appended to ``made``."""
    cached = CachedInstrument(plain, "test-tag")
    if made is not None:
        cached.instrument = lambda f: made.append(f) or plain(f)
    return cached


def _check_behaviour(module) -> None:
    assert module.scale(2) == 6 and module.scale(2, 5, name="n") == 10
    with pytest.raises(TypeCheckError, match='argument "x"'):
        module.scale("2")
    with pytest.raises(TypeCheckError, match='argument "name"'):
        module.scale(2, name=3)
    box = module.Box.of(4)
    assert box.total(1) == 7 and box.first == 0 and module.Box.double(1.5) == 3.0
    with pytest.raises(TypeCheckError):
        module.Box(["a"])
    with pytest.raises(TypeCheckError):
        box.total("1")
    with pytest.raises(TypeCheckError):
        module.Box.of(1.5)
    pick, local = module.make(0)
    cells = dict(zip(pick.__code__.co_freevars, (c.cell_contents for c in pick.__closure__)))
    assert cells == {"Local": local, "offset": 0}  # bound in make's scope, as typeguard binds it
    thing = local()
    assert pick(thing) is thing
    with pytest.raises(TypeCheckError, match="Local"):  # the enclosing function's class
        pick(1)
    pick, local = module.make(-5)
    with pytest.raises(AssertionError):  # the original closure (offset) is kept
        pick(local(), 1)


def test_functions_from_the_cache_are_typeguards(with_instrument, tmp_path, monkeypatch):
    load, plain, _ = with_instrument
    reference = _functions(load(plain))
    cold_instrument = _cached(plain)
    cold = load(cold_instrument)
    files = list((tmp_path / "cache").glob("*.marshal"))
    assert len(files) == 1  # one file for the one source file
    calls = []
    warm_instrument = _cached(plain, calls)
    warm = load(warm_instrument)
    assert calls == []  # every function came from the file
    for module, instrument in ((cold, cold_instrument), (warm, warm_instrument)):
        monkeypatch.setattr(_decorators, "instrument", instrument)
        functions = _functions(module)
        assert functions.keys() == reference.keys() and len(functions) == 7
        for name, ref in reference.items():
            f = functions[name]
            assert isinstance(f, FunctionType)
            assert marshal.dumps(f.__code__) == marshal.dumps(ref.__code__), name
            assert f.__code__ is not ref.__code__ and f.__code__.co_firstlineno == ref.__code__.co_firstlineno
            # instrumented: typeguard's checks are in the code, not only in the original
            assert "typeguard" in f.__code__.co_names, name
            for attr in ("__name__", "__qualname__", "__doc__", "__defaults__", "__kwdefaults__",
                         "__annotations__", "__module__"):
                got, expected = getattr(f, attr), getattr(ref, attr)
                if attr in ("__module__", "__annotations__"):  # each import is its own module
                    got, expected = str(got).replace(module.__name__, "M"), str(expected).replace(ref.__module__, "M")
                assert got == expected, (name, attr)
            assert (f.__closure__ is None) == (ref.__closure__ is None), name
        _check_behaviour(module)
    assert calls == []
    _check_behaviour(load(plain))


def test_a_changed_source_is_instrumented_again(with_instrument):
    load, plain, path = with_instrument
    load(_cached(plain))
    path.write_text(SOURCE.replace("return x * factor", "return x * factor + 1"))
    calls = []
    module = load(_cached(plain, calls))
    assert module.scale(2) == 7  # the new source, not the cached code of the old one
    assert "scale" in [f.__qualname__ for f in calls] and len(calls) == 7


def test_a_damaged_or_unwritable_cache_only_costs_the_work(with_instrument, tmp_path, monkeypatch):
    load, plain, _ = with_instrument
    load(_cached(plain))
    for file in (tmp_path / "cache").glob("*.marshal"):
        file.write_bytes(b"\x00not marshal")
    _check_behaviour(load(_cached(plain)))
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(typeguard_cache.ENV, str(blocker / "cache"))  # a directory under a file
    _check_behaviour(load(_cached(plain)))
    monkeypatch.setenv(typeguard_cache.ENV, "off")
    calls = []
    _check_behaviour(load(_cached(plain, calls)))
    assert len({f.__qualname__ for f in calls}) == 7  # off: typeguard made every one
    assert not (blocker.is_dir() or (tmp_path / "off").exists())


def test_espnet_checks_types_with_the_cache_warm(tmp_path):
    """Two processes importing ESPnet through the plugin: the second makes no instrumentation
    of its own, and ESPnet's typechecked constructors still reject a wrong type."""
    probe = textwrap.dedent("""
        import espnet_prune
        from typeguard import _decorators
        made = []
        plain = _decorators.instrument.instrument
        _decorators.instrument.instrument = lambda f: made.append(f) or plain(f)
        from espnet2.asr.ctc import CTC
        from espnet2.tasks.asr import ASRTask
        CTC(odim=5, encoder_output_size=4)
        try:
            CTC(odim="5", encoder_output_size=4)
        except Exception as e:
            print("ERR", type(e).__name__)
        print("MADE", len(made))
    """)
    env = dict(os.environ, **{typeguard_cache.ENV: str(tmp_path / "cache")}, OMP_NUM_THREADS="1")
    outs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        outs.append(dict(line.split(" ", 1) for line in out.stdout.splitlines() if line[:4] in ("ERR ", "MADE")))
    cold, warm = outs
    assert cold["ERR"] == warm["ERR"] == "TypeCheckError"
    assert int(cold["MADE"]) > 100  # ESPnet's ASR task instruments over a hundred functions
    assert warm["MADE"] == "0"


def test_import_espnet_prune_installs_it_once():
    from importlib.metadata import version

    installed = _decorators.instrument
    assert isinstance(installed, CachedInstrument)
    assert typeguard_cache.install() and _decorators.instrument is installed  # not wrapped twice
    assert not isinstance(installed.instrument, CachedInstrument)
    assert f"typeguard{version('typeguard')}" in installed.tag and sys.implementation.cache_tag in installed.tag
