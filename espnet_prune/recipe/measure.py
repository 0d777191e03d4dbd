"""Timing for the report: encoders and whole decodes of several models, interleaved.

Every timed call reads its own copy of its input (ESPnet's ``GlobalMVN`` normalizes in
place), the models run in a rotating order so that a change of machine load affects all
alike, and every ratio is to the first model, measured in the same run.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np


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


def time_encoders(models: Sequence[Any], inputs: Sequence[Any], repeats: int,
                  audio_s: Sequence[float]) -> List[Dict[str, Any]]:
    """Per model, :func:`summarize_times` of ``model.encode`` on each ``(T, D)`` input (batch 1)."""
    import torch

    def encoder_fn(model):
        def run(x):
            with torch.inference_mode():
                model.encode(x[None], torch.tensor([x.shape[0]], dtype=torch.long))
        return run

    times = time_interleaved([encoder_fn(m) for m in models], inputs, repeats, warmup_inputs=inputs)
    return summarize_times(times, audio_s)


def time_decoders(
    model_dirs: Sequence[Tuple[str, Path]],
    options: Mapping[str, Any],
    inputs: Sequence[Any],
    repeats: int,
    audio_s: Sequence[float],
    fast: bool,
) -> Tuple[Dict[str, Dict[str, Any]], bool]:
    """Whole ``Speech2Text`` decodes of every model, with ESPnet's decoder and the fast one.

    Returns, per model name, ``espnet``: :func:`summarize_times` with ESPnet's incremental
    algorithm (ratios to the first model), and, when ``fast`` and the first model can use
    the fast decoder, ``fast``: the same with :func:`espnet_prune.fast_decoding` (ratios to
    the first model's fast decode) and ``same_hyps``: both decoders gave the same n-best
    on every input; models that cannot use it have no ``fast``. Also whether every repeat
    of every decode gave the same n-best.
    """
    import torch
    from espnet2.bin.asr_inference import Speech2Text

    import espnet_prune
    from espnet_prune.inference import espnet_decoding

    espnet_prune.register()

    def speech2text(d: Path):
        return Speech2Text(asr_train_config=str(d / "config.yaml"),
                           asr_model_file=str(d / "model.pth"), device="cpu", **options)

    decoders: List[Tuple[str, str, Any]] = []  # (model name, decoder kind, Speech2Text)
    for name, d in model_dirs:
        reference = speech2text(d)
        espnet_decoding(reference)  # pruned_transformer decoders: ESPnet's algorithm
        decoders.append((name, "espnet", reference))
        if fast:
            s2t = speech2text(d)
            if espnet_prune.fast_decoding(s2t, require=False):
                decoders.append((name, "fast", s2t))
    # hyps[j][i]: n-best token ids of every timed decode of input i by decoder j
    hyps: List[Dict[int, List[Any]]] = [{} for _ in decoders]

    def decode_fn(s2t):
        def run(x):
            with torch.inference_mode():
                # (T, D) features: Speech2Text batches them to (1, T, D)
                return [r[2] for r in s2t(x)]
        return run

    def record(j: int, i: int, out: Any) -> None:
        hyps[j].setdefault(i, []).append(out)

    times = time_interleaved([decode_fn(s2t) for _, _, s2t in decoders], inputs, repeats,
                             warmup_inputs=inputs[:1], record=record)
    repeatable = all(all(r == reps[0] for r in reps) for per in hyps for reps in per.values())
    index = {(name, kind): j for j, (name, kind, _) in enumerate(decoders)}
    names = [name for name, _ in model_dirs]
    out: Dict[str, Dict[str, Any]] = {}
    espnet_times = [times[index[name, "espnet"]] for name in names]
    for name, summary in zip(names, summarize_times(espnet_times, audio_s)):
        out[name] = {"espnet": summary}
    with_fast = [name for name in names if (name, "fast") in index]
    if with_fast and with_fast[0] == names[0]:
        fast_times = [times[index[name, "fast"]] for name in with_fast]
        for name, summary in zip(with_fast, summarize_times(fast_times, audio_s)):
            out[name]["fast"] = summary
            out[name]["same_hyps"] = hyps[index[name, "espnet"]] == hyps[index[name, "fast"]]
    return out, repeatable


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int) -> Dict[str, Any]:
    import torch

    try:
        import espnet

        espnet_version = espnet.__version__
    except Exception:  # noqa: BLE001
        espnet_version = "unknown"
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
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
    }


def loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
