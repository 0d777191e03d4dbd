"""Command-line entry points (``python -m espnet_prune.bin.<name>``)."""

from __future__ import annotations

from typing import Optional, Sequence


def option_value(argv: Sequence[str], name: str) -> Optional[str]:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``argv`` (the last one wins), as
    ESPnet's argparse would read it; None when absent."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value
