"""Final results table of the recipe: pruned models against the dense baseline.

Stage 9 of ``egs2/librispeech_prune/asr1/run.sh``. One row per model, in ESPnet's
RESULTS.md style, plus a JSON file with every number::

    python -m espnet_prune.recipe.report \\
        --model baseline=exp/asr_baseline/final --model prune_params0.5=exp/prune_params0.5/final \\
        --test_sets dev test --data_dir dump/fbank --decode_name decode_asr \\
        --inference_config conf/mini/decode_asr.yaml \\
        --latency_set test --latency_utts 10 --latency_repeats 5 --threads 1 \\
        --frames_per_second 100 [--fast_decoder true] [--published librispeech_100] \\
        --output RESULTS.md --json results.json

The first ``--model`` is the reference (dense baseline); every ratio is to it. A model
directory holds ESPnet's ``config.yaml`` + ``model.pth``; the models take precomputed
features (trained with ``--input_size``, no frontend), so ``model.encode`` and
``Speech2Text`` receive ``(T, D)`` feature matrices read from
``{data_dir}/{latency_set}/feats.scp``.

What is measured (DESIGN section 4):

* WER of model M on set S: the ``Sum`` line of
  ``{M}/{decode_name}_{S}/score_wer/result.txt`` (sclite ``-o all`` layout, counts
  table preferred, else the ``Sum/Avg`` percentages).
* params: ``numel`` of the built model (total, encoder); encoder MACs at
  ``--macs_seconds`` of audio from the exact cost model (:mod:`espnet_prune.cost`).
* latency: wall time of ``model.encode(feats, lens)``, batch 1,
  ``torch.set_num_threads(--threads)``, ``torch.inference_mode``, after a warm-up pass;
  per utterance the median of ``--latency_repeats`` runs, summed over utterances.
  The models run interleaved (round-robin per utterance and repeat, rotating order) so
  that load drift on the machine hits them alike; ratios are within this run.
* decode RTF: wall time of ``Speech2Text(feats)`` (encoder + beam search, options from
  ``--inference_config``) / audio seconds, audio seconds = frames / ``--frames_per_second``;
  same interleaving, ``--decode_repeats`` runs per utterance after one warm-up decode.
  Measured twice per model, in the same interleaved run: with ESPnet's own decoder
  (``decode_espnet``; a ``pruned_transformer`` decoder, which ESPnet's class cannot hold,
  runs ESPnet's incremental algorithm on its layers: :func:`espnet_prune.inference.espnet_decoding`)
  and, with ``--fast_decoder true`` (the default), with the fast exact decoder the recipe
  decodes with (``decode``; :func:`espnet_prune.fast_decoding`), whose hypotheses are
  checked to be the same (``fast_decoder_same_hyps``).
* WER confidence intervals, paired-bootstrap comparisons with the reference,
  ``--control`` and ``--pair`` models, and the PNG figures: :mod:`espnet_prune.recipe.evidence`.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from espnet2.utils.types import str2bool

from espnet_prune.fileio import atomic_write_text
from espnet_prune.recipe import evidence
from espnet_prune.recipe.options import parse_named_paths

#: Published results (reference rows, not reproduced here).
PUBLISHED: Dict[str, Dict[str, Any]] = {
    "librispeech_100": {
        "label": "ESPnet LibriSpeech-100 Conformer (beam 20, ctc 0.3, no LM)",
        "source": (
            "espnet/espnet egs2/librispeech_100/asr1/README.md, section 'Conformer', rows "
            "beam20_ctc0.3 (model https://huggingface.co/pyf98/librispeech_100h_conformer)"
        ),
        # set -> (WER %, #Snt, #Wrd)
        "wer": {
            "dev_clean": (6.3, 2703, 54402),
            "dev_other": (17.4, 2864, 50948),
            "test_clean": (6.5, 2620, 52576),
            "test_other": (17.3, 2939, 52343),
        },
    },
}

#: Speech2Text arguments the report sets itself.
_OWN_OPTIONS = ("asr_train_config", "asr_model_file", "device")


class ReportError(ValueError):
    """Bad input to the report (the message names the file or option)."""


# --------------------------------------------------------------------------- inputs


def parse_models(specs: Sequence[str]) -> List[Tuple[str, Path]]:
    """``NAME=DIR`` options -> ``[(name, dir)]``; checks config.yaml / model.pth exist."""
    try:
        out = parse_named_paths(specs, "--model", "DIR")
    except ValueError as e:
        raise ReportError(str(e)) from None
    for name, d in out:
        if not d.is_dir():
            raise ReportError(f"--model {name}: model directory not found: {d}")
        for f in ("config.yaml", "model.pth"):
            if not (d / f).is_file():
                raise ReportError(f"--model {name}: {d / f} not found")
    if not out:
        raise ReportError("at least one --model NAME=DIR is required")
    return out


def result_path(model_dir: Path, decode_name: str, test_set: str) -> Path:
    return model_dir / f"{decode_name}_{test_set}" / "score_wer" / "result.txt"


def read_wer(path: Path) -> Dict[str, Any]:
    """WER summary of one sclite-compatible ``result.txt``.

    Returns ``Snt``, ``Wrd``, ``Corr``, ``Sub``, ``Del``, ``Ins``, ``Err``, ``S.Err``
    (percent, one decimal as sclite prints them), ``wer`` (exact percent when the counts
    table is there, else ``Err``), ``counts`` (absolute counts or None) and ``path``.
    """
    from espnet_prune.data.scoring import parse_sum_avg, parse_sum_counts

    if not path.is_file():
        raise ReportError(f"WER result not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        c = parse_sum_counts(text)
    except ValueError:
        c = None
    if c is not None:
        p = c.sclite_percentages()
        out: Dict[str, Any] = {"Snt": c.n_snt, "Wrd": c.n_wrd, **p, "wer": c.wer,
                               "counts": {"Snt": c.n_snt, "Wrd": c.n_wrd, "Corr": c.corr,
                                          "Sub": c.sub, "Del": c.dele, "Ins": c.ins,
                                          "Err": c.err, "S.Err": c.n_snt_err}}
    else:
        try:
            s = parse_sum_avg(text)
        except ValueError:
            raise ReportError(f"{path}: neither a 'Sum' nor a 'Sum/Avg' line (not a sclite "
                              "report?)") from None
        out = dict(s)
        out["wer"] = s["Err"]
        out["counts"] = None
    out["path"] = str(path)
    return out


def read_feats(set_dir: Path, n: int) -> List[Tuple[str, np.ndarray]]:
    """The first ``n`` utterances of ``set_dir/feats.scp`` (file order) as float32 (T, D)."""
    import kaldiio

    scp = set_dir / "feats.scp"
    if not scp.is_file():
        raise ReportError(f"features not found: {scp}")
    num_frames: Dict[str, int] = {}
    u2nf = set_dir / "utt2num_frames"
    if u2nf.is_file():
        for line in u2nf.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) == 2:
                num_frames[parts[0]] = int(parts[1])
    out: List[Tuple[str, np.ndarray]] = []
    with scp.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if len(out) >= n:
                break
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise ReportError(f"{scp}:{lineno}: expected 'utt path'")
            utt, loc = parts[0], parts[1].strip()
            try:
                mat = kaldiio.load_mat(loc)
            except Exception as e:  # noqa: BLE001 - report which entry is unreadable
                raise ReportError(f"{scp}:{lineno}: cannot read features of {utt} from "
                                  f"{loc}: {e}") from e
            mat = np.asarray(mat, dtype=np.float32)
            if mat.ndim != 2 or mat.shape[0] == 0:
                raise ReportError(f"{scp}:{lineno}: {utt} is not a (frames, dim) matrix "
                                  f"(shape {mat.shape})")
            if utt in num_frames and num_frames[utt] != mat.shape[0]:
                raise ReportError(f"{u2nf}: {utt} has {num_frames[utt]} frames but "
                                  f"{loc} holds {mat.shape[0]}")
            out.append((utt, mat))
    if n > 0 and not out:
        raise ReportError(f"{scp}: no utterances")
    return out


def read_speech(set_dir: Path, n: int) -> Tuple[List[Tuple[str, np.ndarray]], float]:
    """The first ``n`` utterances of ``set_dir/wav.scp`` as float32 waveforms ``(samples,)``
    and their sample rate (Hz), for models that read raw audio through their frontend
    (``wav.scp`` of audio files, or of ``x.ark:offset`` entries)."""
    import kaldiio
    import soundfile

    scp = set_dir / "wav.scp"
    if not scp.is_file():
        raise ReportError(f"audio list not found: {scp}")
    out: List[Tuple[str, np.ndarray]] = []
    rates = set()
    for lineno, line in enumerate(scp.read_text(encoding="utf-8").splitlines(), 1):
        if len(out) >= n:
            break
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            continue
        utt, loc = parts[0], parts[1].strip()
        try:
            if ".ark:" in loc:
                rate, wav = kaldiio.load_mat(loc)
            else:
                wav, rate = soundfile.read(loc, dtype="float32")
        except Exception as e:  # noqa: BLE001 - report which entry is unreadable
            raise ReportError(f"{scp}:{lineno}: cannot read audio of {utt} from {loc}: {e}") from e
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1 or wav.shape[0] == 0:
            raise ReportError(f"{scp}:{lineno}: {utt} is not mono audio (shape {wav.shape})")
        rates.add(int(rate))
        out.append((utt, wav))
    if n > 0 and not out:
        raise ReportError(f"{scp}: no utterances")
    if len(rates) > 1:
        raise ReportError(f"{scp}: mixed sample rates {sorted(rates)}")
    return out, float(rates.pop()) if rates else 16000.0


def load_inference_options(path: Optional[str]) -> Tuple[Dict[str, Any], List[str]]:
    """Speech2Text keyword arguments from an ESPnet decode YAML.

    Returns ``(options, ignored)``: keys of ``espnet2.bin.asr_inference``'s command line
    that are not Speech2Text arguments (``ngpu``, ``seed``...) are ignored and listed;
    any other unknown key is an error.
    """
    import yaml

    if path is None:
        return {}, []
    p = Path(path)
    if not p.is_file():
        raise ReportError(f"--inference_config not found: {p}")
    with p.open(encoding="utf-8") as f:
        conf = yaml.safe_load(f) or {}
    if not isinstance(conf, dict):
        raise ReportError(f"{p}: expected a mapping of Speech2Text options")
    from espnet2.bin import asr_inference

    params = set(inspect.signature(asr_inference.Speech2Text.__init__).parameters) - {"self"}
    cli = {a.dest for a in asr_inference.get_parser()._actions}
    options: Dict[str, Any] = {}
    ignored: List[str] = []
    for k, v in conf.items():
        if k in _OWN_OPTIONS:
            raise ReportError(f"{p}: {k!r} is set by the report, remove it from the config")
        if k in params:
            options[k] = v
        elif k in cli:
            ignored.append(k)
        else:
            raise ReportError(f"{p}: unknown Speech2Text option {k!r}")
    return options, ignored


# --------------------------------------------------------------------------- size


def model_size(model, args: argparse.Namespace, seconds: float, fps: float,
               tokens: int = 40) -> Dict[str, Any]:
    """Params of the built model; exact encoder MACs at ``seconds`` of audio, decoder MACs
    per output token and inference MACs (encoder + CTC + decoder for ``tokens`` tokens, one
    hypothesis, the ``macs`` target's convention of :mod:`espnet_prune.targets`)."""
    from espnet_prune.bin.profile import encoder_dims_and_structure
    from espnet_prune.cost import frontend_cost, structure_cost
    from espnet_prune.model_io import param_breakdown
    from espnet_prune.targets import dense_decoder_macs

    dims, structure = encoder_dims_and_structure(model, args)
    cost = structure_cost(dims, structure, seconds, fps)
    t_enc = frontend_cost(dims, int(round(seconds * fps)))[2]
    ctc = t_enc * dims.output_size * model.ctc.ctc_lo.out_features if model.ctc is not None else 0
    decoder = dense_decoder_macs(model.decoder, t_enc, tokens) if model.decoder is not None else 0.0
    memory = dense_decoder_macs(model.decoder, t_enc, 0) if model.decoder is not None else 0.0
    return {
        "decoder_token_macs": (decoder - memory) / tokens,
        "inference_macs": int(cost["macs"] + ctc + decoder),
        "params": param_breakdown(model),
        "block_params": int(cost["block_params"]),
        "encoder_macs": int(cost["macs"]),
        "block_macs": int(cost["block_macs"]),
        "input_size": dims.input_size,
        "encoder": type(model.encoder).__name__,
        "block_structures": [s.to_dict() for s in structure],
    }


# --------------------------------------------------------------------------- timing


def fresh_copy(x: Any) -> Any:
    """A private copy of one input: ESPnet's ``GlobalMVN`` normalizes its input in place,
    so a tensor decoded twice would be normalized twice."""
    return x.clone() if hasattr(x, "clone") else np.array(x, copy=True)


def time_interleaved(
    fns: Sequence[Callable[[Any], Any]],
    inputs: Sequence[Any],
    repeats: int,
    warmup_inputs: Sequence[Any],
    record: Optional[Callable[[int, int, Any], None]] = None,
) -> List[List[List[float]]]:
    """Wall times ``[model][input][repeat]`` of ``fns[m](inputs[i])``, interleaved.

    One warm-up call per model on each of ``warmup_inputs`` first. Then, for every input
    and repeat, every model runs once, in an order rotated by one each round, so that a
    change of machine load in the middle affects all models alike. Every call gets its own
    copy of its input (made outside the timer), so no call sees what an earlier one did to
    it; ``record(m, i, output)`` receives every timed call's output.
    """
    n = len(fns)
    for x in warmup_inputs:
        for fn in fns:
            fn(fresh_copy(x))
    times: List[List[List[float]]] = [[[] for _ in inputs] for _ in fns]
    rnd = 0
    for i, x in enumerate(inputs):
        for _ in range(repeats):
            for k in range(n):
                m = (k + rnd) % n
                x_m = fresh_copy(x)
                t0 = time.perf_counter()
                out = fns[m](x_m)
                times[m][i].append(time.perf_counter() - t0)
                if record is not None:
                    record(m, i, out)
            rnd += 1
    return times


def summarize_times(times: List[List[List[float]]], audio_s: Sequence[float]) -> List[Dict[str, Any]]:
    """Per model: per-utterance medians, their sum, and ratios to model 0 (same run)."""
    out = []
    for per_model in times:
        med = [statistics.median(r) for r in per_model]
        out.append({"per_utt_median_s": med, "total_s": float(sum(med)),
                    "rtf": float(sum(med) / sum(audio_s)) if sum(audio_s) > 0 else None})
    base = out[0]
    for o in out:
        o["ratio"] = o["total_s"] / base["total_s"] if base["total_s"] > 0 else None
        per_utt = [a / b for a, b in zip(o["per_utt_median_s"], base["per_utt_median_s"]) if b > 0]
        o["ratio_median_utt"] = statistics.median(per_utt) if per_utt else None
    return out


# --------------------------------------------------------------------------- report


def environment(threads: int) -> Dict[str, Any]:
    import torch

    try:
        import espnet

        espnet_version = espnet.__version__
    except Exception:  # noqa: BLE001
        espnet_version = "unknown"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    git = None
    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001
        pass
    import espnet_prune

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "espnet": espnet_version,
        "espnet_prune": espnet_prune.__version__,
        "git": git,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
    }


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR", required=True,
                   help="model dir with config.yaml + model.pth; the first is the reference")
    p.add_argument("--test_sets", nargs="+", required=True)
    p.add_argument("--data_dir", required=True, help="{data_dir}/{set}/feats.scp")
    p.add_argument("--decode_name", default="decode_asr",
                   help="WER from {model}/{decode_name}_{set}/score_wer/result.txt")
    p.add_argument("--inference_config", default=None, help="ESPnet decode YAML (Speech2Text options)")
    p.add_argument("--latency_set", default=None, help="default: the last --test_sets entry")
    p.add_argument("--latency_utts", type=int, default=10,
                   help="first N utterances of --latency_set (0: no timing)")
    p.add_argument("--latency_repeats", type=int, default=5, help="encoder runs per utterance")
    p.add_argument("--decode_repeats", type=int, default=1,
                   help="full decodes per utterance (0: no decode RTF)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--frames_per_second", type=float, default=100.0,
                   help="feature frames per second (with --data_format raw: the reference "
                        "model's frontend fs / hop_length)")
    p.add_argument("--data_format", default="fbank", choices=["fbank", "raw"],
                   help="fbank: {data_dir}/{set}/feats.scp features; raw: {data_dir}/{set}/wav.scp "
                        "audio through each model's frontend")
    p.add_argument("--macs_seconds", type=float, default=10.0, help="audio length for MACs")
    p.add_argument("--macs_tokens", type=int, default=40,
                   help="output tokens decoded for the inference MACs (one hypothesis)")
    p.add_argument("--fast_decoder", type=str2bool, default=True,
                   help="also time each model with the fast exact decoder (espnet_prune.fast_decoding)")
    p.add_argument("--published", default=None, choices=sorted(PUBLISHED),
                   help="add published reference rows")
    p.add_argument("--output", required=True, help="Markdown output (RESULTS.md)")
    p.add_argument("--json", default=None, help="JSON output")
    evidence.add_options(p)  # --control, --pair, --bootstrap_*, --confidence, --plots*, --train_log
    return p



def build_report(a: argparse.Namespace, command: str) -> Dict[str, Any]:
    """Measure everything and return the JSON-able report."""
    import torch

    from espnet_prune.model_io import build_asr_model

    # ---- check every input before any expensive work
    models = parse_models(a.model)
    if a.latency_utts < 0 or a.latency_repeats < 1 or a.decode_repeats < 0 or a.threads < 1:
        raise ReportError("--latency_utts >= 0, --latency_repeats >= 1, --decode_repeats >= 0 "
                          "and --threads >= 1 are required")
    if a.frames_per_second <= 0 or a.macs_seconds <= 0:
        raise ReportError("--frames_per_second and --macs_seconds must be positive")
    wers = {name: {s: read_wer(result_path(d, a.decode_name, s)) for s in a.test_sets}
            for name, d in models}
    evidence.check_options(a, [name for name, _ in models])
    utt_stats = evidence.read_statistics(a, models, wers)  # per-utterance errors, checked
    latency_set = a.latency_set or a.test_sets[-1]
    timing = a.latency_utts > 0
    raw = a.data_format == "raw"
    sample_rate = 0.0
    if raw:
        utts, sample_rate = read_speech(Path(a.data_dir) / latency_set, a.latency_utts) if timing else ([], 0.0)
    else:
        utts = read_feats(Path(a.data_dir) / latency_set, a.latency_utts) if timing else []
    options, ignored = load_inference_options(a.inference_config)

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(a.threads)
    try:
        # ---- build, count
        built = []
        rows: List[Dict[str, Any]] = []
        for name, d in models:
            model, args = build_asr_model(d / "config.yaml", d / "model.pth")
            model.eval()
            if raw:
                if getattr(model, "frontend", None) is None:
                    raise ReportError(f"{d / 'config.yaml'}: --data_format raw needs a model "
                                      "with a frontend")
                if not rows:  # MACs at the reference model's frame rate (fs / hop_length)
                    from espnet_prune.bin.profile import frames_per_second

                    a.frames_per_second = frames_per_second(args)
            elif getattr(model, "frontend", None) is not None:
                raise ReportError(f"{d / 'config.yaml'}: the model has a frontend; the report "
                                  "feeds precomputed features (train with --input_size)")
            size = model_size(model, args, a.macs_seconds, a.frames_per_second, a.macs_tokens)
            for utt, mat in ([] if raw else utts[:1]):
                if mat.shape[1] != size["input_size"]:
                    raise ReportError(f"{Path(a.data_dir) / latency_set / 'feats.scp'}: {utt} has "
                                      f"{mat.shape[1]}-dim features, {name} expects "
                                      f"{size['input_size']}")
            built.append(model)
            rows.append({"name": name, "dir": str(d), **size, "wer": wers[name]})

        base = rows[0]
        for r in rows:
            p, bp = r["params"], base["params"]
            r["params_ratio"] = p["total"] / bp["total"]
            r["encoder_params_ratio"] = p["encoder"] / bp["encoder"]
            r["macs_ratio"] = r["encoder_macs"] / base["encoder_macs"]
            r["decoder_token_macs_ratio"] = r["decoder_token_macs"] / base["decoder_token_macs"]
            r["inference_macs_ratio"] = r["inference_macs"] / base["inference_macs"]
            r["sparsity"] = {
                "params_whole_model": 1 - p["total"] / bp["total"],
                "params_encoder": 1 - p["encoder"] / bp["encoder"],
                "params_blocks": 1 - r["block_params"] / base["block_params"],
                "macs_encoder": 1 - r["encoder_macs"] / base["encoder_macs"],
                "macs_blocks": 1 - r["block_macs"] / base["block_macs"],
            }

        # ---- timing
        timing_info: Dict[str, Any] = {"set": latency_set, "utterances": [u for u, _ in utts],
                                       "frames": [int(m.shape[0]) for _, m in utts]}
        timing_info["input_unit"] = "samples" if raw else "frames"
        audio_s = [m.shape[0] / (sample_rate if raw else a.frames_per_second) for _, m in utts]
        timing_info["audio_seconds"] = float(sum(audio_s))
        timing_info["loadavg_before"] = _loadavg()
        if timing:
            feats = [torch.from_numpy(np.array(m)) for _, m in utts]  # kaldiio gives read-only arrays

            def encoder_fn(model):
                def run(x):
                    with torch.inference_mode():
                        model.encode(x[None], torch.tensor([x.shape[0]], dtype=torch.long))
                return run

            t_enc = time_interleaved([encoder_fn(m) for m in built], feats, a.latency_repeats,
                                     warmup_inputs=feats)
            for r, s in zip(rows, summarize_times(t_enc, audio_s)):
                r["encoder_latency"] = s
        if timing and a.decode_repeats > 0:
            import espnet_prune
            from espnet2.bin.asr_inference import Speech2Text

            espnet_prune.register()

            def speech2text(d: Path):
                return Speech2Text(asr_train_config=str(d / "config.yaml"),
                                   asr_model_file=str(d / "model.pth"), device="cpu", **options)

            from espnet_prune.inference import espnet_decoding

            # per model: ESPnet's decoder, then (optionally) the fast decoder
            s2ts: List[Any] = []
            for name, d in models:
                reference = speech2text(d)
                espnet_decoding(reference)  # pruned_transformer decoders: ESPnet's algorithm
                s2ts.append(reference)
                if a.fast_decoder:
                    fast = speech2text(d)
                    s2ts.append(fast if espnet_prune.fast_decoding(fast, require=False) else None)
            active = [k for k, s in enumerate(s2ts) if s is not None]
            # hyps[k][i]: n-best token ids of every timed decode of input i by decoder k
            hyps: Dict[int, Dict[int, List[Any]]] = {k: {} for k in active}

            def decode_fn(s2t):
                def run(x):
                    with torch.inference_mode():
                        # (T, D) features: Speech2Text batches them to (1, T, D)
                        return [r[2] for r in s2t(x)]
                return run

            def record(j: int, i: int, out: Any) -> None:
                hyps[active[j]].setdefault(i, []).append(out)

            t_dec = time_interleaved([decode_fn(s2ts[k]) for k in active],
                                     feats, a.decode_repeats, warmup_inputs=feats[:1], record=record)
            timing_info["decode_repeatable"] = all(
                all(r == reps[0] for r in reps) for per_k in hyps.values() for reps in per_k.values())
            times = dict(zip(active, t_dec))
            per = 2 if a.fast_decoder else 1
            espnet_times = [times[m * per] for m in range(len(models))]
            for r, s in zip(rows, summarize_times(espnet_times, audio_s)):
                r["decode_espnet"] = dict(s, decoder="espnet")
                r["decode"] = r["decode_espnet"]
            fast_ok = [m for m in range(len(models)) if m * per + 1 in times] if a.fast_decoder else []
            if fast_ok and fast_ok[0] == 0:
                fast_times = [times[m * 2 + 1] for m in fast_ok]
                for m, s in zip(fast_ok, summarize_times(fast_times, audio_s)):
                    r = rows[m]
                    r["decode"] = dict(s, decoder="fast")
                    r["fast_decoder_ratio"] = s["total_s"] / r["decode_espnet"]["total_s"]
                    r["fast_decoder_same_hyps"] = hyps[m * 2] == hyps[m * 2 + 1]
            del s2ts
        timing_info["loadavg_after"] = _loadavg()
    finally:
        torch.set_num_threads(prev_threads)

    report: Dict[str, Any] = {
        "environment": environment(a.threads),
        "command": command,
        "settings": {
            "reference_model": base["name"], "test_sets": list(a.test_sets),
            "data_dir": a.data_dir, "data_format": a.data_format, "decode_name": a.decode_name,
            "inference_config": a.inference_config, "inference_options": options,
            "inference_options_ignored": ignored, "latency_set": latency_set,
            "latency_utts": a.latency_utts, "latency_repeats": a.latency_repeats,
            "decode_repeats": a.decode_repeats, "threads": a.threads,
            "frames_per_second": a.frames_per_second, "macs_seconds": a.macs_seconds,
            "macs_tokens": a.macs_tokens,
            "fast_decoder": a.fast_decoder,
        },
        "timing": timing_info,
        "statistics": evidence.attach_statistics(a, rows, utt_stats),
        "models": rows,
    }
    if a.published:
        pub = PUBLISHED[a.published]
        report["published"] = {
            "name": a.published, "label": pub["label"], "source": pub["source"],
            "wer": {s: {"Err": w, "Snt": n, "Wrd": nw} for s, (w, n, nw) in pub["wer"].items()},
            "matched_sets": [s for s in a.test_sets if s in pub["wer"]],
        }
    return report


# --------------------------------------------------------------------------- Markdown


def _f(x: Optional[float], fmt: str) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, fmt)


DEFINITIONS = (
    "Every ratio is to the reference model `{ref}` (first `--model`). "
    "**WER** (%): sclite-compatible (S + D + I) / reference words, from "
    "`<model>/{decode}_<set>/score_wer/result.txt`, one decimal as sclite prints it. "
    "**params**: `numel` of the built ESPnet model (whole model, and encoder alone). "
    "**enc MACs@{sec:g}s**: multiply-accumulates of the encoder's matrix products and "
    "convolutions (subsampling front end + blocks) for {sec:g} s of audio at "
    "{fps:g} frames/s, from the exact cost model `espnet_prune.cost`. "
    "**dec MACs/token**: the decoder's multiply-accumulates per output token of one "
    "hypothesis (self attention over the prefix, source attention over the encoder output, "
    "FFN, output layer; averaged over {tok} tokens), as the fast decoder runs it "
    "(`espnet_prune.cost.decoder_cost`). **inference MACs**: encoder + CTC projection + "
    "decoder for {tok} tokens of one hypothesis, source keys/values once per utterance "
    "(the `macs` target of `espnet_prune.targets`). "
    "**Sparsity** = 1 - cost(model) / cost(reference), given below for params of the whole "
    "model, of the encoder and of the prunable blocks, and for MACs of the whole encoder and "
    "of the blocks. "
    "**enc latency ratio**: wall time of `model.encode(feats, lens)` (batch 1, "
    "{threads} thread(s), `torch.inference_mode`, after a warm-up pass), median of "
    "{reps} runs per utterance, summed over the first {n} utterances of `{lset}`, divided by "
    "the reference's sum measured in the same run, models interleaved round-robin. "
    "**decode RTF**: wall time of ESPnet's `Speech2Text` on the same features (encoder + "
    "beam search, options of `{inf}`; median of {dreps} decode(s) per utterance after one "
    "warm-up decode, summed) / audio duration (frames / {fps:g}), with ESPnet's own "
    "Transformer decoder (**ESPnet decoder**; for a `pruned_transformer` decoder, ESPnet's "
    "incremental algorithm on its layers) and with the fast exact decoder that the recipe "
    "decodes with (**fast decoder**, `espnet_prune.fast_decoding`: same hypotheses, encoder "
    "keys/values computed once per utterance), all interleaved in one run; **RTF ratio** is "
    "the fast-decoder RTF (ESPnet's when the fast decoder is off) over the reference's, "
    "**fast / ESPnet** the two decoders' time ratio per model. Absolute times depend on the "
    "machine and its load; compare ratios."
)


def format_markdown(r: Dict[str, Any]) -> str:
    env, st, rows = r["environment"], r["settings"], r["models"]
    sets = st["test_sets"]
    sec = st["macs_seconds"]
    L: List[str] = ["# RESULTS", "", "## Environments"]
    L += [f"- date: `{env['date']}`",
          f"- python version: `{env['python']}`",
          f"- espnet version: `espnet {env['espnet']}`",
          f"- pytorch version: `pytorch {env['torch']}`",
          f"- espnet_prune version: `{env['espnet_prune']}`"
          + (f" (git `{env['git']}`)" if env.get("git") else ""),
          f"- CPU: `{env['cpu']}`, {env['cpu_count']} cores; torch threads: {env['threads']}",
          f"- load average (1/5/15 min) before / after timing: "
          f"`{r['timing'].get('loadavg_before')}` / `{r['timing'].get('loadavg_after')}`",
          f"- command: `{r['command']}`", ""]
    L += ["## Definitions", "",
          DEFINITIONS.format(ref=st["reference_model"], decode=st["decode_name"], sec=sec,
                             fps=st["frames_per_second"], threads=st["threads"],
                             tok=st.get("macs_tokens", 40),
                             reps=st["latency_repeats"], n=len(r["timing"]["utterances"]),
                             lset=st["latency_set"], inf=st["inference_config"] or "defaults",
                             dreps=st["decode_repeats"])
          + " " + evidence.definitions(r), ""]
    tu = r["timing"]
    if tu["utterances"]:
        L += [f"Timing inputs: {len(tu['utterances'])} utterances of `{tu['set']}`, "
              f"{sum(tu['frames'])} {tu.get('input_unit', 'frames')} = {tu['audio_seconds']:.2f} s of audio; "
              "every timed call reads its own copy of the input"
              + ({True: "; every repeat of a decode gave the same hypotheses",
                  False: "; **repeats of a decode gave different hypotheses: timings suspect**"}
                 .get(tu.get("decode_repeatable"), "") + "."), ""]

    # ---- summary
    head = (["model"] + [f"WER {s}" for s in sets]
            + ["params (M)", "params ratio", "enc params (M)", f"enc MACs@{sec:g}s (G)",
               "MACs ratio", "dec MACs/token ratio", "inference MACs ratio", "enc latency ratio",
               "decode RTF (ESPnet decoder)", "decode RTF (fast decoder)", "RTF ratio"])
    L += ["## Summary", ""] + evidence.markdown_head(head)
    for m in rows:
        lat, dec = m.get("encoder_latency") or {}, m.get("decode") or {}
        esp = m.get("decode_espnet") or {}
        fast_rtf = dec.get("rtf") if dec.get("decoder") == "fast" else None
        cells = ([evidence.cell(m["name"])] + [evidence.wer_cell(m["wer"][s]) for s in sets]
                 + [_f(m["params"]["total"] / 1e6, ".2f"), _f(m["params_ratio"], ".3f"),
                    _f(m["params"]["encoder"] / 1e6, ".2f"), _f(m["encoder_macs"] / 1e9, ".3f"),
                    _f(m["macs_ratio"], ".3f"), _f(m.get("decoder_token_macs_ratio"), ".3f"),
                    _f(m.get("inference_macs_ratio"), ".3f"), _f(lat.get("ratio"), ".3f"),
                    _f(esp.get("rtf"), ".3g"), _f(fast_rtf, ".3g"), _f(dec.get("ratio"), ".3f")])
        L.append(evidence.markdown_row(cells))
    pub = r.get("published")
    if pub:
        cells = ([evidence.cell(f"{pub['label']} (published, not reproduced here)")]
                 + [_f(pub["wer"][s]["Err"], ".1f") if s in pub["wer"] else "-" for s in sets]
                 + ["-"] * 11)
        L.append(evidence.markdown_row(cells))
        L += ["", f"Published reference ({pub['source']}): "
              + ", ".join(f"{s} {v['Err']:.1f}" for s, v in pub["wer"].items())
              + " WER; not reproduced here" + (
                  "" if pub["matched_sets"] else
                  " (none of --test_sets is named like these sets, so no cell is filled)") + "."]
    L.append("")
    L += evidence.paired_section(r)

    # ---- sparsity and absolute costs
    L += ["## Size and sparsity (1 - cost / reference cost)", "",
          "| model | encoder | params | enc params | block params | enc MACs | block MACs "
          "| params sparsity (whole model) | params sparsity (encoder) | params sparsity (blocks) "
          "| MACs sparsity (encoder) | MACs sparsity (blocks) |",
          "|" + "---|" * 12]
    for m in rows:
        sp = m["sparsity"]
        L.append(evidence.markdown_row([
            evidence.cell(m["name"]), m["encoder"], f"{m['params']['total']:,}",
            f"{m['params']['encoder']:,}", f"{m['block_params']:,}", f"{m['encoder_macs']:,}",
            f"{m['block_macs']:,}", _f(sp["params_whole_model"], ".3f"),
            _f(sp["params_encoder"], ".3f"), _f(sp["params_blocks"], ".3f"),
            _f(sp["macs_encoder"], ".3f"), _f(sp["macs_blocks"], ".3f")]))
    L.append("")

    # ---- timing
    if tu["utterances"]:
        L += ["## Timing (same run, interleaved)", "",
              "| model | enc time (ms, sum of medians) | enc latency ratio | median per-utt ratio "
              "| decode time, ESPnet decoder (s) | decode RTF, ESPnet decoder "
              "| decode time, fast decoder (s) | decode RTF, fast decoder | fast / ESPnet "
              "| same hypotheses | RTF ratio |",
              "|" + "---|" * 11]
        for m in rows:
            lat, dec = m.get("encoder_latency") or {}, m.get("decode") or {}
            esp = m.get("decode_espnet") or {}
            fast = dec if dec.get("decoder") == "fast" else {}
            same = m.get("fast_decoder_same_hyps")
            L.append(evidence.markdown_row([
                evidence.cell(m["name"]), _f(lat["total_s"] * 1e3 if "total_s" in lat else None, ".2f"),
                _f(lat.get("ratio"), ".3f"), _f(lat.get("ratio_median_utt"), ".3f"),
                _f(esp.get("total_s"), ".3f"), _f(esp.get("rtf"), ".3g"),
                _f(fast.get("total_s"), ".3f"), _f(fast.get("rtf"), ".3g"),
                _f(m.get("fast_decoder_ratio"), ".3f"),
                "-" if same is None else ("yes" if same else "**no**"),
                _f(dec.get("ratio"), ".3f")]))
        L.append("")

    L += evidence.plots_section(r)

    # ---- per-model WER tables, ESPnet layout
    for m in rows:
        L += [f"## {m['name']}: `{m['dir']}`", "", "### WER", "",
              "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|", "|---|---|---|---|---|---|---|---|---|"]
        for s in sets:
            w = m["wer"][s]
            L.append(f"|{st['decode_name']}_{s}|{w['Snt']}|{w['Wrd']}|" + "|".join(
                f"{w[k]:.1f}" for k in ("Corr", "Sub", "Del", "Ins", "Err", "S.Err")) + "|")
        L.append("")
    return "\n".join(L)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = get_parser().parse_args(argv)
    command = "python -m espnet_prune.recipe.report " + shlex.join(argv)
    report = build_report(a, command)
    report["plots"] = evidence.write_plots(a, report)  # PNGs beside --output
    md = format_markdown(report)
    if a.json:
        atomic_write_text(a.json, json.dumps(report, indent=1) + "\n")
    atomic_write_text(a.output, md)
    return report


if __name__ == "__main__":
    try:
        main()
    except (ReportError, evidence.EvidenceError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
