"""Kaldi data directories: read, write (atomically), validate and subset.

A Kaldi data dir holds one text file per relation, one ``key value`` pair per line,
sorted by key in C-locale (byte) order:

* ``wav.scp``   utt -> audio path (or Kaldi rxfilename)
* ``text``      utt -> transcript (may be empty)
* ``utt2spk``   utt -> speaker
* ``spk2utt``   speaker -> space separated utterances (derived from ``utt2spk``)
* ``utt2dur``   utt -> duration in seconds (optional)

Any other ``utt2*`` file, ``feats.scp``, ``feats_shape`` and ``segments`` are
per-utterance too, and
``spk2*`` files (other than spk2utt; e.g. ``spk2gender``) per-speaker; all are carried
along (restricted) by :func:`subset_data_dir`.

Command line::

    python -m espnet_prune.data.kaldi_dir validate data/train
    python -m espnet_prune.data.kaldi_dir fix data/train        # regenerate spk2utt, sort files
    python -m espnet_prune.data.kaldi_dir subset data/train data/train_sub --utt_list ids.txt
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

from espnet_prune.fileio import atomic_write_text

PathLike = Union[str, "os.PathLike[str]"]


REQUIRED_FILES = ("wav.scp", "text", "utt2spk")
# files whose keys are utterance ids (besides any ``utt2*``)
UTT_KEYED_FILES = ("wav.scp", "text", "feats.scp", "feats_shape", "segments")
# files whose keys are speaker ids (besides any ``spk2*`` other than spk2utt)
SPK_KEYED_FILES = ("spk2gender",)


def _is_spk_keyed(name: str) -> bool:
    return name in SPK_KEYED_FILES or (name.startswith("spk2") and name != "spk2utt")


class KaldiDataDirError(ValueError):
    """A Kaldi data dir (or one of its files) is malformed or inconsistent."""


# --------------------------------------------------------------------------- I/O helpers


def read_kaldi_map(path: PathLike, allow_empty_value: bool = False) -> Dict[str, str]:
    """Read a ``key value`` Kaldi table into an insertion-ordered dict.

    The value is the rest of the line after the first run of whitespace (it may contain
    spaces, e.g. a transcript or a piped command).

    Raises:
        KaldiDataDirError: the file is missing, a line has no key, a key is repeated, or a
            value is empty while ``allow_empty_value`` is False; the message names the file
            and the 1-based line number.
    """
    path = Path(path)
    if not path.is_file():
        raise KaldiDataDirError(f"{path}: file not found")
    out: Dict[str, str] = {}
    first_line: Dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip():
                raise KaldiDataDirError(f"{path}:{lineno}: empty line")
            if line[0].isspace():
                raise KaldiDataDirError(f"{path}:{lineno}: line starts with whitespace: {line!r}")
            parts = line.split(maxsplit=1)
            key = parts[0]
            value = parts[1].strip() if len(parts) > 1 else ""
            if not value and not allow_empty_value:
                raise KaldiDataDirError(f"{path}:{lineno}: key '{key}' has no value")
            if key in out:
                raise KaldiDataDirError(
                    f"{path}:{lineno}: duplicate key '{key}' (first seen on line {first_line[key]})"
                )
            out[key] = value
            first_line[key] = lineno
    return out


def write_kaldi_map(path: PathLike, mapping: Mapping[str, object], sort: bool = True) -> None:
    """Write ``mapping`` as a Kaldi table atomically (sorted by key unless ``sort=False``).

    Values are converted with ``str``; lists/tuples are joined with spaces.
    """
    keys: Iterable[str] = sorted(mapping) if sort else list(mapping)
    lines = []
    for k in keys:
        if not k or any(c.isspace() for c in k):
            raise KaldiDataDirError(f"{path}: invalid key {k!r} (empty or contains whitespace)")
        v = mapping[k]
        if isinstance(v, (list, tuple)):
            v = " ".join(str(x) for x in v)
        v = str(v)
        lines.append(f"{k} {v}".rstrip(" ") + "\n")
    atomic_write_text(path, "".join(lines))


def utt2spk_to_spk2utt(utt2spk: Mapping[str, str]) -> Dict[str, List[str]]:
    """Invert utt2spk: speaker -> sorted list of its utterances (speakers sorted too)."""
    spk2utt: Dict[str, List[str]] = {}
    for utt in sorted(utt2spk):
        spk2utt.setdefault(utt2spk[utt], []).append(utt)
    return {s: spk2utt[s] for s in sorted(spk2utt)}


# --------------------------------------------------------------------------- data dir


@dataclass
class KaldiDataDir:
    """In-memory Kaldi data dir.

    Attributes:
        wav_scp: utt -> audio path / rxfilename.
        text: utt -> transcript.
        utt2spk: utt -> speaker.
        utt2dur: utt -> duration in seconds, or None when absent.
        extra: other tables keyed by utterance (file name -> {utt: value}), e.g.
            ``utt2voice``, ``utt2num_frames``, ``feats.scp``.
    """

    wav_scp: Dict[str, str]
    text: Dict[str, str]
    utt2spk: Dict[str, str]
    utt2dur: Optional[Dict[str, float]] = None
    extra: Dict[str, Dict[str, str]] = field(default_factory=dict)

    @property
    def spk2utt(self) -> Dict[str, List[str]]:
        return utt2spk_to_spk2utt(self.utt2spk)

    @property
    def utt_ids(self) -> List[str]:
        """Utterance ids in sorted (C-locale) order."""
        return sorted(self.wav_scp)

    def __len__(self) -> int:
        return len(self.wav_scp)


def _is_utt_keyed(name: str) -> bool:
    return name in UTT_KEYED_FILES or name.startswith("utt2")


def validate_data_dir(data: Union[KaldiDataDir, PathLike], where: str = "") -> None:
    """Check a data dir (path or object) for consistency.

    Checks: required files exist and parse; wav.scp, text and utt2spk have exactly the same
    utterance ids; utt2dur (and any other utt-keyed table) only names known utterances and,
    for utt2dur, holds positive numbers; spk2utt (when on disk) is the inverse of utt2spk;
    sorting utterances by id also sorts them by speaker (Kaldi's convention that the speaker
    id is a prefix of the utterance id).

    Raises:
        KaldiDataDirError: naming the file and the offending utterance/speaker id.
    """
    spk2utt_disk: Optional[Dict[str, str]] = None
    if not isinstance(data, KaldiDataDir):
        d = Path(data)
        where = str(d)
        data = read_data_dir(d, validate=False)
        if (d / "spk2utt").is_file():
            spk2utt_disk = read_kaldi_map(d / "spk2utt")
    prefix = f"{where}/" if where else ""

    utts = set(data.wav_scp)
    if not utts:
        raise KaldiDataDirError(f"{prefix}wav.scp: no utterances")
    for name, table in (("text", data.text), ("utt2spk", data.utt2spk)):
        missing = sorted(set(table) - utts)
        if missing:
            raise KaldiDataDirError(
                f"{prefix}{name}: utterance '{missing[0]}' is not in wav.scp"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        absent = sorted(utts - set(table))
        if absent:
            raise KaldiDataDirError(
                f"{prefix}{name}: utterance '{absent[0]}' from wav.scp is missing"
                + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else "")
            )
    if data.utt2dur is not None:
        for utt, dur in data.utt2dur.items():
            if utt not in utts:
                raise KaldiDataDirError(f"{prefix}utt2dur: utterance '{utt}' is not in wav.scp")
            if not dur > 0:
                raise KaldiDataDirError(f"{prefix}utt2dur: utterance '{utt}' has duration {dur}")
    for name, table in data.extra.items():
        if not _is_utt_keyed(name):
            continue
        for utt in table:
            if utt not in utts:
                raise KaldiDataDirError(f"{prefix}{name}: utterance '{utt}' is not in wav.scp")
    # speaker order must agree with utterance order (spk id is a prefix of the utt id)
    sorted_utts = sorted(utts)
    spks = [data.utt2spk[u] for u in sorted_utts]
    for i in range(1, len(spks)):
        if spks[i] < spks[i - 1]:
            raise KaldiDataDirError(
                f"{prefix}utt2spk: sorting by utterance id does not sort by speaker "
                f"('{sorted_utts[i - 1]}' -> '{spks[i - 1]}' comes before "
                f"'{sorted_utts[i]}' -> '{spks[i]}'); make the speaker id a prefix of the "
                "utterance id"
            )
    if spk2utt_disk is not None:
        expected = data.spk2utt
        for spk, utts_str in spk2utt_disk.items():
            if spk not in expected:
                raise KaldiDataDirError(f"{prefix}spk2utt: speaker '{spk}' is not in utt2spk")
            if utts_str.split() != expected[spk]:
                raise KaldiDataDirError(
                    f"{prefix}spk2utt: utterances of speaker '{spk}' disagree with utt2spk"
                )
        missing_spk = sorted(set(expected) - set(spk2utt_disk))
        if missing_spk:
            raise KaldiDataDirError(
                f"{prefix}spk2utt: speaker '{missing_spk[0]}' from utt2spk is missing"
            )


def read_data_dir(path: PathLike, validate: bool = True) -> KaldiDataDir:
    """Read a Kaldi data dir from ``path``.

    Reads wav.scp, text, utt2spk, optional utt2dur and every other ``utt2*`` / ``spk2*``
    file plus ``feats.scp`` / ``segments`` into :attr:`KaldiDataDir.extra`. ``validate`` runs
    :func:`validate_data_dir` on the result (including spk2utt when present).
    """
    d = Path(path)
    if not d.is_dir():
        raise KaldiDataDirError(f"{d}: not a directory")
    for name in REQUIRED_FILES:
        if not (d / name).is_file():
            raise KaldiDataDirError(f"{d}/{name}: required file not found")
    wav_scp = read_kaldi_map(d / "wav.scp")
    text = read_kaldi_map(d / "text", allow_empty_value=True)
    utt2spk = read_kaldi_map(d / "utt2spk")
    utt2dur = None
    if (d / "utt2dur").is_file():
        raw = read_kaldi_map(d / "utt2dur")
        utt2dur = {}
        for k, v in raw.items():
            try:
                utt2dur[k] = float(v)
            except ValueError:
                raise KaldiDataDirError(
                    f"{d}/utt2dur: utterance '{k}' has a non-numeric duration {v!r}"
                ) from None
    extra: Dict[str, Dict[str, str]] = {}
    for p in sorted(d.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.name in ("utt2spk", "utt2dur") or p.name in REQUIRED_FILES:
            continue
        if _is_utt_keyed(p.name) or _is_spk_keyed(p.name):
            extra[p.name] = read_kaldi_map(p, allow_empty_value=True)
    data = KaldiDataDir(wav_scp=wav_scp, text=text, utt2spk=utt2spk, utt2dur=utt2dur, extra=extra)
    if validate:
        validate_data_dir(d)
    return data


def write_data_dir(path: PathLike, data: KaldiDataDir, validate: bool = True) -> None:
    """Write ``data`` to directory ``path`` (created if needed); every file atomically.

    Writes wav.scp, text, utt2spk, spk2utt, utt2dur (when present) and the extra tables.
    Validation runs *before* anything is written, so an inconsistent object leaves the
    directory untouched.
    """
    d = Path(path)
    if validate:
        validate_data_dir(data, where=str(d))
    d.mkdir(parents=True, exist_ok=True)
    write_kaldi_map(d / "wav.scp", data.wav_scp)
    write_kaldi_map(d / "text", data.text)
    write_kaldi_map(d / "utt2spk", data.utt2spk)
    write_kaldi_map(d / "spk2utt", data.spk2utt)
    if data.utt2dur is not None:
        write_kaldi_map(d / "utt2dur", {k: f"{v:.4f}" for k, v in data.utt2dur.items()})
    for name, table in data.extra.items():
        write_kaldi_map(d / name, table)


def subset_data_dir(src: PathLike, dst: PathLike, utts: Iterable[str]) -> KaldiDataDir:
    """Copy the utterances ``utts`` of data dir ``src`` into a new data dir ``dst``.

    Every per-utterance table (wav.scp, text, utt2spk, utt2*, feats.scp, segments) is
    restricted to ``utts``; spk2utt is regenerated; spk2gender is restricted to the
    speakers that remain. Unknown ids raise :class:`KaldiDataDirError`.

    Returns:
        The subset as a :class:`KaldiDataDir`.
    """
    data = read_data_dir(src, validate=False)
    keep = set(utts)
    unknown = sorted(keep - set(data.wav_scp))
    if unknown:
        raise KaldiDataDirError(f"{src}: utterance '{unknown[0]}' to keep is not in wav.scp")
    if not keep:
        raise KaldiDataDirError(f"{src}: subset to {dst} would be empty")

    def sub(table: Mapping[str, str]) -> Dict[str, str]:
        return {k: v for k, v in table.items() if k in keep}

    utt2spk = sub(data.utt2spk)
    spks = set(utt2spk.values())
    extra: Dict[str, Dict[str, str]] = {}
    for name, table in data.extra.items():
        if _is_spk_keyed(name):
            extra[name] = {k: v for k, v in table.items() if k in spks}
        else:
            extra[name] = sub(table)
    out = KaldiDataDir(
        wav_scp=sub(data.wav_scp),
        text=sub(data.text),
        utt2spk=utt2spk,
        utt2dur=None if data.utt2dur is None else {k: v for k, v in data.utt2dur.items() if k in keep},
        extra=extra,
    )
    write_data_dir(dst, out)
    return out


def fix_data_dir(path: PathLike) -> KaldiDataDir:
    """Re-sort every table and regenerate spk2utt in place (each file atomically).

    Utterances not present in all of wav.scp, text and utt2spk are dropped (Kaldi's
    ``fix_data_dir.sh`` behaviour); the number dropped is printed to stderr.
    """
    d = Path(path)
    data = read_data_dir(d, validate=False)
    common = set(data.wav_scp) & set(data.text) & set(data.utt2spk)
    dropped = len(set(data.wav_scp) | set(data.text) | set(data.utt2spk)) - len(common)
    if dropped:
        print(f"fix_data_dir: {d}: dropped {dropped} utterance(s) not in all of "
              "wav.scp/text/utt2spk", file=sys.stderr)
    if not common:
        raise KaldiDataDirError(f"{d}: no utterance is in all of wav.scp, text and utt2spk")

    def sub(table: Mapping[str, str]) -> Dict[str, str]:
        return {k: v for k, v in table.items() if k in common}

    extra = {n: (t if _is_spk_keyed(n) else sub(t)) for n, t in data.extra.items()}
    fixed = KaldiDataDir(
        wav_scp=sub(data.wav_scp),
        text=sub(data.text),
        utt2spk=sub(data.utt2spk),
        utt2dur=None if data.utt2dur is None else {k: v for k, v in data.utt2dur.items() if k in common},
        extra=extra,
    )
    write_data_dir(d, fixed)
    return fixed


# --------------------------------------------------------------------------- CLI


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Validate / fix / subset Kaldi data dirs.")
    sp = p.add_subparsers(dest="cmd", required=True)
    v = sp.add_parser("validate", help="check a data dir; exit 1 with a message if broken")
    v.add_argument("data_dir")
    f = sp.add_parser("fix", help="sort tables, regenerate spk2utt, drop partial utterances")
    f.add_argument("data_dir")
    s = sp.add_parser("subset", help="copy a subset of utterances to a new data dir")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--utt_list", required=True, help="file with one utterance id per line")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        if args.cmd == "validate":
            data = read_data_dir(args.data_dir)
            print(f"{args.data_dir}: OK ({len(data)} utterances, {len(data.spk2utt)} speakers)")
        elif args.cmd == "fix":
            data = fix_data_dir(args.data_dir)
            print(f"{args.data_dir}: fixed ({len(data)} utterances)")
        else:
            with open(args.utt_list, encoding="utf-8") as fh:
                ids = [ln.split()[0] for ln in fh if ln.strip()]
            data = subset_data_dir(args.src, args.dst, ids)
            print(f"{args.dst}: {len(data)} utterances")
    except KaldiDataDirError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
