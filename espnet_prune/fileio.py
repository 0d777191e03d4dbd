"""Atomic file writes and completion markers shared by every stage of the recipe.

A file is written to a temporary name in its directory, flushed, fsync'ed and
renamed over the target, so a reader (or a restarted stage) sees the old file or
the new complete one, never a partial one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def _file_mode() -> int:
    """Permissions a plain ``open(..., "w")`` would give (0o666 minus the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_MODE = _file_mode()


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; on success it is fsync'ed and renamed
    over ``path`` (with the permissions a plain ``open`` would give), on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _MODE)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file + rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_copy(src: PathLike, dst: PathLike) -> None:
    """Copy the file ``src`` (links followed) to ``dst`` through a temp file + rename."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(Path(src).resolve(), tmp)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, ``\\n`` newlines) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_torch_saves() -> Iterator[None]:
    """Within the block, ``torch.save(obj, path)`` to a file path writes through
    :func:`atomic_path`, so a process killed (or failing) while saving leaves the previous file
    whole. ESPnet's trainer writes ``checkpoint.pth`` and ``<epoch>epoch.pth`` in place: a run
    killed during that write could not resume. File objects are passed through unchanged."""
    import torch

    plain = torch.save

    def save(obj, f, *args, **kwargs):
        if not isinstance(f, (str, os.PathLike)):
            return plain(obj, f, *args, **kwargs)
        with atomic_path(f) as tmp:
            return plain(obj, tmp, *args, **kwargs)

    torch.save = save
    try:
        yield
    finally:
        torch.save = plain


def write_marker(directory: PathLike, record: dict, name: str = ".done") -> None:
    """Write a completion marker: ``record`` as JSON (sorted keys), atomically, last of all
    of a step's outputs; :func:`read_marker` reads it back."""
    atomic_write_text(Path(directory) / name, json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_marker(directory: PathLike, name: str = ".done") -> Optional[dict]:
    """The JSON record of a completion marker, or None when absent or unreadable."""
    marker = Path(directory) / name
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None
