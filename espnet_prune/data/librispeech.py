"""LibriSpeech: resumable download with MD5 check, safe extraction, Kaldi data prep.

Download: HTTP range requests continue a ``<file>.part`` after an interruption; the
finished file's MD5 is checked against :data:`MD5SUMS` (the publisher's md5sum.txt values
on openslr.org) before it is renamed into place; a mismatch removes the ``.part`` and
raises. Several OpenSLR mirrors are tried in turn.

Data prep: from ``<root>/LibriSpeech/<subset>/<reader>/<chapter>/<reader>-<chapter>.trans.txt``
and the ``.flac`` files next to it, write a Kaldi data dir whose ``wav.scp`` points at the
``.flac`` files directly (no ``flac -d |`` pipe; read them with soundfile, see
:mod:`espnet_prune.data.features`). As in Kaldi's ``local/data_prep.sh`` the speaker id is
``<reader>-<chapter>`` and ``spk2gender`` comes from ``SPEAKERS.TXT`` when present.

Command line::

    python -m espnet_prune.data.librispeech download --dl_dir downloads \\
        --subsets dev-clean test-clean train-clean-100
    python -m espnet_prune.data.librispeech prepare --libri_dir downloads/LibriSpeech \\
        --subsets dev-clean test-clean --out_dir data      # -> data/dev_clean, data/test_clean
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

from espnet_prune.data.kaldi_dir import (
    KaldiDataDir,
    KaldiDataDirError,
    atomic_write_text,
    write_data_dir,
)

PathLike = Union[str, "os.PathLike[str]"]

#: Official MD5 sums of the LibriSpeech tarballs (openslr.org/resources/12/md5sum.txt) and
#: of Mini LibriSpeech (openslr.org/resources/31/md5sum.txt).
MD5SUMS: Dict[str, str] = {
    "dev-clean": "42e2234ba48799c1f50f24a7926300a1",
    "dev-other": "c8d0bcc9cca99d4f8b62fcc847357931",
    "test-clean": "32fa31d27d2e1cad72775fee3f4849a9",
    "test-other": "fb5a50374b501bb3bac4815ee91d3135",
    "train-clean-100": "2a93770f6d5c6c964bc36631d331a522",
    "train-clean-360": "c0e676e450a7ff2f54aeade5171606fa",
    "train-other-500": "d1a0fd59409feb2c614ce4d30c387708",
    "dev-clean-2": "6d7ab67ac6a1d2c993d050e16d61080d",
    "train-clean-5": "5df7d4e78065366204ca6845bb08f490",
}

#: OpenSLR resource number of each subset.
RESOURCE: Dict[str, int] = {s: 12 for s in MD5SUMS}
RESOURCE.update({"dev-clean-2": 31, "train-clean-5": 31})

MIRRORS: List[str] = [
    "https://www.openslr.org/resources",
    "https://us.openslr.org/resources",
    "https://openslr.elda.org/resources",
    "https://openslr.magicdatatech.com/resources",
    "https://openslr.trmal.net/resources",
]

_UTT_RE = re.compile(r"^(\d+)-(\d+)-(\d+)$")

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


class ChecksumError(RuntimeError):
    """A downloaded file does not have the expected MD5."""


# --------------------------------------------------------------------------- download


def md5sum(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex MD5 of a file."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def download_file(
    url: str,
    dest: PathLike,
    md5: Optional[str] = None,
    timeout: float = 60.0,
    retries: int = 5,
    chunk: int = 1 << 20,
    log: Log = _stderr,
) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest + '.part'`` with HTTP Range requests.

    If ``dest`` exists (and matches ``md5`` when given) nothing is downloaded. The data goes
    to ``<dest>.part``; on a dropped connection it retries (``retries`` times, backing off)
    from the current size. A server that ignores the Range header (status 200) restarts
    the file. The finished ``.part`` is checked against ``md5`` (when given) and renamed
    to ``dest``.

    Raises:
        ChecksumError: MD5 mismatch (the ``.part`` is deleted).
        urllib.error.URLError / OSError: the download failed after all retries.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        if md5 is None or md5sum(dest) == md5:
            log(f"{dest}: present")
            return dest
        raise ChecksumError(f"{dest}: exists but its MD5 is not {md5}; remove it to re-download")
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"User-Agent": "espnet_prune/0.1"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status = getattr(resp, "status", 200)
                if have and status == 200:
                    log(f"{url}: server ignored the range request, restarting")
                    have = 0
                mode = "ab" if have else "wb"
                total = None
                if status == 206:
                    cr = resp.headers.get("Content-Range", "")
                    mt = re.match(r"bytes (\d+)-(\d+)/(\d+)", cr)
                    if mt:
                        if int(mt.group(1)) != have:
                            raise OSError(f"{url}: server resumed at {mt.group(1)}, "
                                          f"expected {have}")
                        total = int(mt.group(3))
                else:
                    cl = resp.headers.get("Content-Length")
                    total = int(cl) if cl else None
                done = have
                last = time.time()
                with open(part, mode) as f:
                    while True:
                        b = resp.read(chunk)
                        if not b:
                            break
                        f.write(b)
                        done += len(b)
                        if time.time() - last > 30:
                            pct = f" ({100 * done / total:.1f}%)" if total else ""
                            log(f"{dest.name}: {done / 1e6:.0f} MB{pct}")
                            last = time.time()
                if total is not None and done < total:
                    raise OSError(f"{url}: connection closed at {done} of {total} bytes")
            break
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing left to fetch: the .part is complete
                break
            if 400 <= e.code < 500:
                raise
            err: Exception = e
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            err = e
        attempt += 1
        if attempt > retries:
            raise err
        wait = min(60.0, 2.0 ** attempt)
        log(f"{url}: {err}; retry {attempt}/{retries} in {wait:.0f} s")
        time.sleep(wait)
    if md5 is not None:
        got = md5sum(part)
        if got != md5:
            part.unlink()
            raise ChecksumError(f"{url}: MD5 {got} != expected {md5}; partial file removed")
    os.replace(part, dest)
    log(f"{dest}: downloaded" + (" (MD5 ok)" if md5 else " (no MD5 known, not verified)"))
    return dest


def download_subset(subset: str, dl_dir: PathLike, mirrors: Sequence[str] = MIRRORS,
                    retries: int = 3, log: Log = _stderr) -> Path:
    """Download ``<subset>.tar.gz`` into ``dl_dir`` trying each mirror; MD5 verified.

    A ``.part`` left by one mirror is resumed from the next (same file on every mirror).
    """
    if subset not in RESOURCE:
        raise ValueError(f"unknown LibriSpeech subset {subset!r}; known: {sorted(RESOURCE)}")
    dest = Path(dl_dir) / f"{subset}.tar.gz"
    errors = []
    for m in mirrors:
        url = f"{m}/{RESOURCE[subset]}/{subset}.tar.gz"
        try:
            return download_file(url, dest, md5=MD5SUMS.get(subset), retries=retries, log=log)
        except ChecksumError:
            raise
        except Exception as e:  # noqa: BLE001 - try the next mirror
            errors.append(f"{url}: {e}")
            log(f"{url}: failed ({e}); trying next mirror")
    raise OSError(f"could not download {subset}:\n  " + "\n  ".join(errors))


def extract_subset(tar_path: PathLike, dest_dir: PathLike, subset: str, log: Log = _stderr) -> Path:
    """Extract a LibriSpeech tarball so that ``<dest_dir>/LibriSpeech/<subset>`` exists.

    Extraction goes to a temporary directory inside ``dest_dir`` and the subset directory
    is moved into place afterwards, then ``<subset>/.complete`` is written; an existing
    complete subset is left alone. Members escaping the target (absolute paths, ``..``,
    links) are refused.
    """
    dest = Path(dest_dir)
    final = dest / "LibriSpeech" / subset
    if (final / ".complete").is_file():
        log(f"{final}: already extracted")
        return final
    tmp = dest / f".extract-{subset}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(tar_path, "r:*") as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(tmp, filter="data")
            else:  # pragma: no cover - Python without PEP 706 backport
                for m in tf.getmembers():
                    p = (tmp / m.name).resolve()
                    if not str(p).startswith(str(tmp.resolve())) or m.issym() or m.islnk():
                        raise tarfile.TarError(f"{tar_path}: unsafe member {m.name}")
                tf.extractall(tmp)
        got = tmp / "LibriSpeech" / subset
        if not got.is_dir():
            raise FileNotFoundError(f"{tar_path} has no LibriSpeech/{subset} directory")
        (dest / "LibriSpeech").mkdir(parents=True, exist_ok=True)
        for extra in (tmp / "LibriSpeech").iterdir():  # SPEAKERS.TXT, README.TXT, ...
            if extra.is_file() and not (dest / "LibriSpeech" / extra.name).exists():
                shutil.move(str(extra), str(dest / "LibriSpeech" / extra.name))
        if final.exists():
            shutil.rmtree(final)
        shutil.move(str(got), str(final))
        atomic_write_text(final / ".complete", f"{Path(tar_path).name}\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"{final}: extracted")
    return final


def fetch_subset(subset: str, dl_dir: PathLike, mirrors: Sequence[str] = MIRRORS,
                 keep_tar: bool = False, log: Log = _stderr) -> Path:
    """Download (if needed), verify and extract one subset; returns its directory.

    Does nothing when ``<dl_dir>/LibriSpeech/<subset>/.complete`` exists, so a rerun after
    the tarball was deleted does not download again.
    """
    final = Path(dl_dir) / "LibriSpeech" / subset
    if (final / ".complete").is_file():
        log(f"{final}: already downloaded and extracted")
        return final
    tar = download_subset(subset, dl_dir, mirrors=mirrors, log=log)
    extract_subset(tar, dl_dir, subset, log=log)
    if not keep_tar:
        tar.unlink()
    return final


# --------------------------------------------------------------------------- data prep


def read_speakers_txt(path: PathLike) -> Dict[str, str]:
    """Reader id -> gender ('m'/'f') from LibriSpeech's SPEAKERS.TXT (';' comments)."""
    out: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith(";") or not line.strip():
                continue
            fields = [x.strip() for x in line.split("|")]
            if len(fields) >= 2 and fields[1].upper() in ("M", "F"):
                out[fields[0]] = fields[1].lower()
    return out


def prepare_subset(
    subset_dir: PathLike,
    out_dir: PathLike,
    with_utt2dur: bool = True,
    log: Log = _stderr,
) -> KaldiDataDir:
    """Write a Kaldi data dir for one extracted LibriSpeech subset.

    Args:
        subset_dir: ``.../LibriSpeech/<subset>`` (holds ``<reader>/<chapter>/``).
        out_dir: the data dir to write (e.g. ``data/dev_clean``).
        with_utt2dur: also write utt2dur (reads every flac header).

    Raises:
        KaldiDataDirError: a transcript line is malformed, names an utterance of another
            reader/chapter, repeats an id, or its ``.flac`` is missing (the message names
            the utterance id and the path).
    """
    root = Path(subset_dir).resolve()
    if not root.is_dir():
        raise KaldiDataDirError(f"{root}: LibriSpeech subset directory not found")
    wav_scp: Dict[str, str] = {}
    text: Dict[str, str] = {}
    utt2spk: Dict[str, str] = {}
    trans_files = sorted(root.glob("*/*/*.trans.txt"))
    if not trans_files:
        raise KaldiDataDirError(f"{root}: no <reader>/<chapter>/*.trans.txt files")
    for tf in trans_files:
        reader, chapter = tf.parent.parent.name, tf.parent.name
        if tf.name != f"{reader}-{chapter}.trans.txt":
            raise KaldiDataDirError(f"{tf}: expected name {reader}-{chapter}.trans.txt")
        with open(tf, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.split(maxsplit=1)
                utt = parts[0]
                mt = _UTT_RE.match(utt)
                if not mt or mt.group(1) != reader or mt.group(2) != chapter:
                    raise KaldiDataDirError(
                        f"{tf}:{lineno}: utterance id '{utt}' does not match "
                        f"{reader}-{chapter}-NNNN")
                if utt in text:
                    raise KaldiDataDirError(f"{tf}:{lineno}: duplicate utterance id '{utt}'")
                flac = tf.parent / f"{utt}.flac"
                if not flac.is_file():
                    raise KaldiDataDirError(
                        f"utterance '{utt}' ({tf}:{lineno}): audio file not found: {flac}")
                wav_scp[utt] = str(flac)
                text[utt] = " ".join(parts[1].split()) if len(parts) > 1 else ""
                utt2spk[utt] = f"{reader}-{chapter}"
    utt2dur = None
    if with_utt2dur:
        import soundfile

        utt2dur = {}
        for utt, path in wav_scp.items():
            try:
                info = soundfile.info(path)
            except Exception as e:  # noqa: BLE001
                raise KaldiDataDirError(f"utterance '{utt}': cannot read audio {path}: {e}") from e
            utt2dur[utt] = info.frames / info.samplerate
    extra: Dict[str, Dict[str, str]] = {}
    speakers_txt = root.parent / "SPEAKERS.TXT"
    if speakers_txt.is_file():
        genders = read_speakers_txt(speakers_txt)
        spk2gender = {}
        for spk in sorted(set(utt2spk.values())):
            g = genders.get(spk.split("-")[0])
            if g is not None:
                spk2gender[spk] = g
        if spk2gender:
            extra["spk2gender"] = spk2gender
    data = KaldiDataDir(wav_scp=wav_scp, text=text, utt2spk=utt2spk, utt2dur=utt2dur,
                        extra=extra)
    write_data_dir(out_dir, data)
    log(f"{out_dir}: {len(wav_scp)} utterances, {len(set(utt2spk.values()))} speakers")
    return data


def data_dir_name(subset: str) -> str:
    """Kaldi/ESPnet name of a subset's data dir: ``dev-clean`` -> ``dev_clean``."""
    return subset.replace("-", "_")


# --------------------------------------------------------------------------- CLI


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="LibriSpeech download and Kaldi data prep.")
    sp = p.add_subparsers(dest="cmd", required=True)
    d = sp.add_parser("download", help="download (resumable, MD5 checked) and extract")
    d.add_argument("--dl_dir", required=True, help="tarballs go here; extracted to "
                   "<dl_dir>/LibriSpeech/<subset>")
    d.add_argument("--subsets", nargs="+", required=True, choices=sorted(RESOURCE))
    d.add_argument("--mirror", action="append", default=None,
                   help="base URL(s) to try instead of the built-in OpenSLR mirrors")
    d.add_argument("--keep_tar", action="store_true", help="keep tarballs after extraction")
    r = sp.add_parser("prepare", help="extracted subsets -> Kaldi data dirs")
    r.add_argument("--libri_dir", required=True, help="the LibriSpeech/ directory")
    r.add_argument("--subsets", nargs="+", required=True)
    r.add_argument("--out_dir", required=True, help="writes <out_dir>/<subset with _>")
    r.add_argument("--no_utt2dur", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        if args.cmd == "download":
            for s in args.subsets:
                fetch_subset(s, args.dl_dir, mirrors=args.mirror or MIRRORS,
                             keep_tar=args.keep_tar)
        else:
            for s in args.subsets:
                prepare_subset(Path(args.libri_dir) / s, Path(args.out_dir) / data_dir_name(s),
                               with_utt2dur=not args.no_utt2dur)
    except (KaldiDataDirError, ChecksumError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
