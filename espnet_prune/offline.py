"""Offline helpers: keep ESPnet's import from trying to download nltk data.

ESPnet imports ``g2p_en``, which calls ``nltk.download`` for two resources
when ``nltk.data.find`` cannot see them. Empty stand-in archives are enough to
satisfy the lookup (the grapheme-to-phoneme code is never used for ASR here).

    python -m espnet_prune.offline DIR   # then: export NLTK_DATA=DIR
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

_RESOURCES = ("taggers/averaged_perceptron_tagger_eng.zip", "corpora/cmudict.zip")


def ensure_nltk_stub(directory: str | Path) -> Path:
    """Create empty nltk resource archives under ``directory`` (idempotent)."""
    root = Path(directory)
    for rel in _RESOURCES:
        path = root / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".zip.{os.getpid()}.tmp")  # processes may race to make it
            zipfile.ZipFile(tmp, "w").close()
            tmp.replace(path)
    return root


if __name__ == "__main__":
    print(ensure_nltk_stub(sys.argv[1] if len(sys.argv) > 1 else "nltk_data"))
