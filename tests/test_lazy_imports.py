"""ESPnet imports without the text front ends ASR never uses (espnet_prune.lazy_imports)."""

import os
import subprocess
import sys

import pytest

from espnet_prune.offline import ensure_nltk_stub

#: English number expansion through both lazy users of inflect (tacotron_cleaner, g2p_en)
PROBE = """
import sys
{setup}
import espnet2.tasks.asr
deferred = type(sys.modules.get("inflect")).__name__ == "_Deferred"
import tacotron_cleaner.cleaners, g2p_en.expand
print("OUT", deferred)
print("OUT", tacotron_cleaner.cleaners.english_cleaners("I have 3 dogs and 21 cats, the 1st of 2"))
print("OUT", g2p_en.expand.normalize_numbers("$2.50 for 1,200 items in 1999"))
print("OUT", type(sys.modules["inflect"]).__name__, type(sys.modules["g2p_en"]).__name__)
"""


def _probe(setup: str, tmp_path) -> list:
    env = dict(os.environ, NLTK_DATA=str(ensure_nltk_stub(tmp_path / "nltk")), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return [line[4:] for line in out.stdout.splitlines() if line.startswith("OUT ")]


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("offline")
    return _probe("", tmp), _probe("import espnet_prune", tmp)


def test_import_espnet_prune_defers_inflect_until_used(probes):
    plain, ours = probes
    assert plain[0] == "False" and ours[0] == "True"  # ESPnet's import did not load inflect
    assert ours[-1] == "module module"  # loaded for real once used


def test_deferred_modules_give_the_same_text(probes):
    plain, ours = probes
    assert plain[1:3] == ours[1:3]
    assert ours[1] == "i have three dogs and twenty-one cats, the first of two"
