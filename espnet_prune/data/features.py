"""Log-mel filterbank features for a Kaldi data dir, with ESPnet's own frontend.

Features are computed by ``espnet2.asr.frontend.default.DefaultFrontend`` (STFT, power
spectrum, librosa mel matrix, natural log) in eval mode, one utterance at a time, on audio
read as float32 in [-1, 1] (what ESPnet's raw-audio loader feeds it). A model trained on
these features with ``frontend: null`` sees exactly what a model with
``frontend: default`` and the same ``frontend_conf`` computes from the wav.

Output directory (a copy of the input data dir plus)::

    feats.ark          Kaldi binary float matrices, (T, n_mels) per utterance
    feats.scp          utt -> <abs path>/feats.ark:<offset>
    utt2num_frames     utt -> T
    feats_shape        utt -> T,n_mels (ESPnet's shape file)
    feats_stats.npz    count (frames), sum (n_mels,), sum_square (n_mels,): float64,
                       the format espnet2.layers.global_mvn.GlobalMVN reads
    feats_dim, feats_type ("extracted"), frontend_conf.json
    .done              completion marker (holds the parameters)

T = floor(n_samples / hop_length) + 1 (centered STFT). The ark/scp are written under
temporary names and renamed at the end; the output does not depend on ``nj`` (byte
identical ark). Unreadable or missing audio raises :class:`FeatureError` naming the
utterance and the file, and leaves no output.

Command line::

    python -m espnet_prune.data.features extract data/train dump/fbank/train --nj 2
    python -m espnet_prune.data.features filter dump/fbank/train dump/fbank/train_filt \\
        --min_frames 10 --max_frames 3000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from espnet_prune.fileio import read_marker, write_marker
from espnet_prune.data.kaldi_dir import (
    KaldiDataDirError,
    atomic_write_text,
    read_data_dir,
    read_kaldi_map,
    subset_data_dir,
    write_kaldi_map,
)
from espnet_prune.data.pool import Command, run_jobs

PathLike = Union[str, "os.PathLike[str]"]

# files of the source data dir that are copied along with the features
_COPY_EXCLUDE = {"feats.scp", "feats.ark", "utt2num_frames", "feats_shape",
                 "feats_stats.npz", "feats_dim",
                 "feats_type", "frontend_conf.json", ".done", "cmvn.ark"}


class FeatureError(RuntimeError):
    """Audio of an utterance cannot be read or is unsuitable (message names utt + file)."""


@dataclass(frozen=True)
class FbankConfig:
    """Frontend parameters (ESPnet ``frontend_conf`` names). fs in Hz; sizes in samples."""

    fs: int = 16000
    n_fft: int = 512
    win_length: Optional[int] = None
    hop_length: int = 160
    n_mels: int = 80
    fmin: Optional[int] = None
    fmax: Optional[int] = None

    def frontend_conf(self) -> Dict[str, object]:
        """Keyword arguments for ``DefaultFrontend`` (and an ESPnet ``frontend_conf``)."""
        return {k: v for k, v in asdict(self).items()}


def make_frontend(cfg: FbankConfig = FbankConfig()):
    """ESPnet's DefaultFrontend for ``cfg``, in eval mode (no WPE/beamformer)."""
    from espnet2.asr.frontend.default import DefaultFrontend

    fe = DefaultFrontend(frontend_conf=None, **cfg.frontend_conf())
    fe.eval()
    return fe


def num_frames(n_samples: int, hop_length: int = 160) -> int:
    """Frames produced by the centered STFT: floor(n_samples / hop) + 1."""
    return n_samples // hop_length + 1


def load_audio(path: str, utt_id: str, fs: int) -> np.ndarray:
    """Read one utterance as float32 in [-1, 1], shape (n_samples,).

    ``path`` is a file soundfile can read (wav, flac, ...), or a Kaldi rxfilename
    (``cmd |`` or ``ark:offset``) read with kaldiio.

    Raises:
        FeatureError: missing/corrupt file, wrong sample rate, multi-channel or too short;
            the message names ``utt_id`` and ``path``.
    """
    import soundfile

    try:
        if path.rstrip().endswith("|") or (":" in path and not os.path.exists(path)):
            import kaldiio

            loaded = kaldiio.load_mat(path)
            rate, data = loaded if isinstance(loaded, tuple) else (fs, loaded)
            data = np.asarray(data)
            if np.issubdtype(data.dtype, np.integer):
                data = data.astype(np.float32) / 32768.0
            data = data.astype(np.float32)
        else:
            if not os.path.isfile(path):
                raise FeatureError(f"utterance '{utt_id}': audio file not found: {path}")
            data, rate = soundfile.read(path, dtype="float32", always_2d=False)
    except FeatureError:
        raise
    except Exception as e:  # noqa: BLE001 - soundfile/kaldiio raise many types
        raise FeatureError(f"utterance '{utt_id}': cannot read audio {path}: {e}") from e
    if rate != fs:
        raise FeatureError(f"utterance '{utt_id}': {path} has sample rate {rate}, expected {fs}")
    if data.ndim != 1:
        raise FeatureError(f"utterance '{utt_id}': {path} has {data.shape[1]} channels, "
                           "expected mono")
    if not np.all(np.isfinite(data)):
        raise FeatureError(f"utterance '{utt_id}': {path} contains NaN/Inf samples")
    return data


def compute_fbank(wave: np.ndarray, frontend) -> np.ndarray:
    """Log-mel features of one utterance: wave (n,) float -> (T, n_mels) float32."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None]
        feats, lens = frontend(x, torch.tensor([x.shape[1]]))
    return feats[0, : int(lens[0])].numpy().astype(np.float32)


# --------------------------------------------------------------------------- workers


def _extract_part(args: Tuple[List[Tuple[str, str]], str, FbankConfig]) -> Dict[str, object]:
    """Compute features of ``items`` into ark ``part_path``.

    Returns offsets (relative to the part), frame counts and per-utterance float64 sums
    of the features and of their squares.
    """
    import kaldiio
    import torch

    items, part_path, cfg = args
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same arithmetic whatever nj is
    try:
        fe = make_frontend(cfg)
        offsets: List[int] = []
        frames: List[int] = []
        sums: List[np.ndarray] = []
        sqs: List[np.ndarray] = []
        with open(part_path, "wb") as f:
            for utt, path in items:
                wave = load_audio(path, utt, cfg.fs)
                if wave.shape[0] <= cfg.n_fft // 2:
                    raise FeatureError(
                        f"utterance '{utt}': {path} is too short ({wave.shape[0]} samples; "
                        f"the STFT needs more than {cfg.n_fft // 2})")
                feats = compute_fbank(wave, fe)
                pos = f.tell()
                kaldiio.save_ark(f, {utt: feats})
                offsets.append(pos + len(utt.encode("utf-8")) + 1)
                frames.append(int(feats.shape[0]))
                f64 = feats.astype(np.float64)
                sums.append(f64.sum(0))
                sqs.append((f64 * f64).sum(0))
            f.flush()
            os.fsync(f.fileno())
        # per-utterance sums: the parent adds them in utterance order, so the statistics
        # do not depend on how the utterances were split into jobs
        return {"offsets": offsets, "frames": frames, "sums": sums, "sqs": sqs,
                "size": os.path.getsize(part_path)}
    finally:
        torch.set_num_threads(prev_threads)


def _run_workers(jobs: List[Tuple[List[Tuple[str, str]], str, FbankConfig]],
                 out: Path) -> List[Dict[str, object]]:
    """Run each job in its own ``python -m espnet_prune.data.features _worker`` process.

    Plain subprocesses (not multiprocessing, not fork) so that callers need no
    ``__main__`` guard and nothing of the parent (threads, torch state) leaks into the
    workers. All jobs run at once; if any fails, the first in job order is reported.
    """
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])  # make the package importable
    env["PYTHONPATH"] = os.pathsep.join(x for x in (pkg_root, env.get("PYTHONPATH")) if x)
    specs = [out / f".feats.job{j}.json" for j in range(len(jobs))]
    results_npz = [out / f".feats.job{j}.npz" for j in range(len(jobs))]

    def start(j: int) -> Command:
        items, part, cfg = jobs[j]
        atomic_write_text(specs[j], json.dumps({"items": items, "part": part,
                                                "cfg": asdict(cfg),
                                                "result": str(results_npz[j])}))
        return Command([sys.executable, "-m", "espnet_prune.data.features", "_worker",
                        str(specs[j])], env)

    try:
        failed = {f.index: f for f in run_jobs(len(jobs), start, nj=len(jobs))}
        results, errors = [], []
        for j, res in enumerate(results_npz):
            if j in failed:
                lines = failed[j].output.strip().splitlines()
                msg = next((ln for ln in reversed(lines) if "FeatureError:" in ln), None)
                errors.append(msg.split("FeatureError:", 1)[1].strip() if msg
                              else "\n".join(lines[-20:]))
                continue
            with np.load(res) as z:
                results.append({"offsets": z["offsets"].tolist(), "frames": z["frames"].tolist(),
                                "sums": list(z["sums"]), "sqs": list(z["sqs"]),
                                "size": int(z["size"])})
        if errors:
            raise FeatureError(errors[0])
        return results
    finally:
        for spec, res in zip(specs, results_npz):
            spec.unlink(missing_ok=True)
            res.unlink(missing_ok=True)
            Path(str(res) + ".tmp.npz").unlink(missing_ok=True)


def _worker_main(spec_path: str) -> int:
    """Entry point of a worker process: run one job spec, save its result as npz."""
    spec = json.loads(Path(spec_path).read_text())
    cfg = FbankConfig(**spec["cfg"])
    items = [(u, p) for u, p in spec["items"]]
    r = _extract_part((items, spec["part"], cfg))
    n_mels = cfg.n_mels
    tmp = spec["result"] + ".tmp.npz"
    np.savez(tmp, offsets=np.asarray(r["offsets"], dtype=np.int64),
             frames=np.asarray(r["frames"], dtype=np.int64),
             sums=np.asarray(r["sums"], dtype=np.float64).reshape(-1, n_mels),
             sqs=np.asarray(r["sqs"], dtype=np.float64).reshape(-1, n_mels),
             size=np.asarray(r["size"], dtype=np.int64))
    os.replace(tmp, spec["result"])
    return 0


def _split(items: List[Tuple[str, str]], nj: int) -> List[List[Tuple[str, str]]]:
    """Contiguous, near-equal chunks (order preserved)."""
    nj = max(1, min(nj, len(items)))
    k, r = divmod(len(items), nj)
    out, pos = [], 0
    for j in range(nj):
        n = k + (1 if j < r else 0)
        out.append(items[pos:pos + n])
        pos += n
    return out


# --------------------------------------------------------------------------- driver


def _done_record(cfg: FbankConfig, src: Path) -> Dict[str, object]:
    return {"fbank": asdict(cfg), "src": str(src)}


def is_complete(out_dir: PathLike, cfg: FbankConfig, src: PathLike) -> bool:
    rec = read_marker(out_dir)
    if rec is None:
        return False
    want = _done_record(cfg, Path(src).resolve())
    return all(rec.get(k) == v for k, v in want.items())


def extract_features(
    data_dir: PathLike,
    out_dir: PathLike,
    cfg: FbankConfig = FbankConfig(),
    nj: int = 1,
    log=lambda s: print(s, file=sys.stderr),
) -> Dict[str, object]:
    """Extract log-mel features of every utterance of ``data_dir`` into ``out_dir``.

    Args:
        data_dir: Kaldi data dir with wav.scp (paths to wav/flac/... or rxfilenames).
        out_dir: output data dir (may equal ``data_dir``).
        cfg: frontend parameters.
        nj: parallel worker processes (each reads a contiguous chunk of wav.scp).

    Returns:
        Summary: ``skipped``, ``n_utts``, ``frames``, ``seconds``.

    Raises:
        FeatureError: an utterance's audio is missing/corrupt (names utt and file); the
            output dir then holds no new feats.scp/feats.ark/.done.
        KaldiDataDirError: ``data_dir`` is not a valid data dir.
    """
    src = Path(data_dir).resolve()
    out = Path(out_dir).resolve()
    t0 = time.time()
    if is_complete(out, cfg, src):
        log(f"{out}: features complete, nothing to do")
        return {"skipped": True}
    data = read_data_dir(src)
    if (src / "segments").is_file():
        raise KaldiDataDirError(f"{src}/segments: segmented data dirs are not supported")
    out.mkdir(parents=True, exist_ok=True)
    (out / ".done").unlink(missing_ok=True)
    items = [(u, data.wav_scp[u]) for u in sorted(data.wav_scp)]
    chunks = _split(items, nj)
    parts = [str(out / f".feats.part{j}.ark.tmp") for j in range(len(chunks))]
    jobs = [(c, p, cfg) for c, p in zip(chunks, parts)]
    tmp_ark = out / ".feats.ark.tmp"
    try:
        if len(jobs) == 1:
            results = [_extract_part(jobs[0])]
        else:
            results = _run_workers(jobs, out)
        # concatenate the parts into one ark; shift offsets
        ark_final = out / "feats.ark"
        scp: Dict[str, str] = {}
        utt2frames: Dict[str, int] = {}
        base = 0
        for (chunk, res) in zip(chunks, results):
            for (utt, _), off, nf in zip(chunk, res["offsets"], res["frames"]):
                scp[utt] = f"{ark_final}:{base + off}"
                utt2frames[utt] = nf
            base += int(res["size"])
        if len(parts) == 1:
            os.replace(parts[0], tmp_ark)
        else:
            with open(tmp_ark, "wb") as fo:
                for part in parts:
                    with open(part, "rb") as fi:
                        shutil.copyfileobj(fi, fo, 16 * 1024 * 1024)
                fo.flush()
                os.fsync(fo.fileno())
    except BaseException:
        tmp_ark.unlink(missing_ok=True)
        raise
    finally:
        for p in parts:
            Path(p).unlink(missing_ok=True)
    count = int(sum(utt2frames.values()))
    s = np.zeros(cfg.n_mels, dtype=np.float64)
    sq = np.zeros(cfg.n_mels, dtype=np.float64)
    for r in results:
        for a, b in zip(r["sums"], r["sqs"]):
            s += a
            sq += b

    # copy the data dir's own files (unless writing in place)
    if out != src:
        for p in sorted(src.iterdir()):
            if p.is_file() and not p.name.startswith(".") and p.name not in _COPY_EXCLUDE:
                shutil.copyfile(p, out / p.name)
    os.replace(tmp_ark, out / "feats.ark")
    write_kaldi_map(out / "feats.scp", scp)
    write_kaldi_map(out / "utt2num_frames", utt2frames)
    write_kaldi_map(out / "feats_shape", {u: f"{t},{cfg.n_mels}" for u, t in utt2frames.items()})
    _save_stats(out / "feats_stats.npz", count, s, sq)
    atomic_write_text(out / "feats_dim", f"{cfg.n_mels}\n")
    atomic_write_text(out / "feats_type", "extracted\n")
    atomic_write_text(out / "frontend_conf.json",
                      json.dumps(cfg.frontend_conf(), indent=2, sort_keys=True) + "\n")
    seconds = time.time() - t0
    rec = _done_record(cfg, src)
    rec.update({"n_utts": len(items), "frames": count, "seconds": round(seconds, 2), "nj": nj})
    write_marker(out, rec)
    log(f"{out}: {len(items)} utterances, {count} frames, {seconds:.1f} s (nj={nj})")
    return {"skipped": False, "n_utts": len(items), "frames": count, "seconds": seconds}


def _save_stats(path: Path, count: int, s: np.ndarray, sq: np.ndarray) -> None:
    """Write GlobalMVN stats atomically (np.savez to a temp file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, count=np.asarray(count, dtype=np.int64), sum=s.astype(np.float64),
             sum_square=sq.astype(np.float64))
    os.replace(tmp, path)


def read_stats(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and variance (n_mels,) from a ``feats_stats.npz`` (as GlobalMVN computes them)."""
    st = np.load(path)
    count = float(st["count"])
    mean = st["sum"] / count
    var = st["sum_square"] / count - mean * mean
    return mean, var


def filter_by_length(
    src_dir: PathLike,
    dst_dir: PathLike,
    min_frames: int = 0,
    max_frames: Optional[int] = None,
) -> Dict[str, int]:
    """Copy to ``dst_dir`` the utterances with ``min_frames <= T <= max_frames``.

    Uses ``utt2num_frames`` (from :func:`extract_features`); all per-utterance tables are
    restricted and spk2utt regenerated; other files (feats_stats.npz, feats_dim, ...) are
    copied unchanged (stats still describe the unfiltered set).

    Returns:
        ``{"kept": n, "dropped": m}``.
    """
    src = Path(src_dir)
    frames_file = src / "utt2num_frames"
    if not frames_file.is_file():
        raise KaldiDataDirError(f"{frames_file}: not found (extract features first)")
    frames = read_kaldi_map(frames_file)
    keep = [u for u, t in frames.items()
            if int(t) >= min_frames and (max_frames is None or int(t) <= max_frames)]
    if not keep:
        raise KaldiDataDirError(f"{src}: no utterance has {min_frames}..{max_frames} frames")
    dst = Path(dst_dir)
    (dst / ".done").unlink(missing_ok=True)
    subset_data_dir(src, dst, keep)
    for name in ("feats_stats.npz", "feats_dim", "feats_type", "frontend_conf.json"):
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    write_marker(dst, {"filtered_from": str(src.resolve()), "min_frames": min_frames,
                       "max_frames": max_frames, "kept": len(keep)})
    return {"kept": len(keep), "dropped": len(frames) - len(keep)}


# --------------------------------------------------------------------------- CLI


def get_parser() -> argparse.ArgumentParser:
    d = FbankConfig()
    p = argparse.ArgumentParser(description="Log-mel features with ESPnet's DefaultFrontend.")
    sp = p.add_subparsers(dest="cmd", required=True)
    e = sp.add_parser("extract", help="data dir -> feats.scp/ark, utt2num_frames, stats")
    e.add_argument("data_dir")
    e.add_argument("out_dir")
    e.add_argument("--nj", type=int, default=1)
    e.add_argument("--fs", type=int, default=d.fs)
    e.add_argument("--n_fft", type=int, default=d.n_fft)
    e.add_argument("--win_length", type=int, default=d.win_length)
    e.add_argument("--hop_length", type=int, default=d.hop_length)
    e.add_argument("--n_mels", type=int, default=d.n_mels)
    e.add_argument("--fmin", type=int, default=d.fmin)
    e.add_argument("--fmax", type=int, default=d.fmax)
    f = sp.add_parser("filter", help="keep utterances within a frame-count range")
    f.add_argument("src_dir")
    f.add_argument("dst_dir")
    f.add_argument("--min_frames", type=int, default=0)
    f.add_argument("--max_frames", type=int, default=None)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_worker"]:  # internal: one parallel job of extract_features
        return _worker_main(argv[1])
    args = get_parser().parse_args(argv)
    try:
        if args.cmd == "extract":
            cfg = FbankConfig(fs=args.fs, n_fft=args.n_fft, win_length=args.win_length,
                              hop_length=args.hop_length, n_mels=args.n_mels, fmin=args.fmin,
                              fmax=args.fmax)
            extract_features(args.data_dir, args.out_dir, cfg, nj=args.nj)
        else:
            r = filter_by_length(args.src_dir, args.dst_dir, args.min_frames, args.max_frames)
            print(f"{args.dst_dir}: kept {r['kept']}, dropped {r['dropped']}")
    except (FeatureError, KaldiDataDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
