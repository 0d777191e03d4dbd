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
* training cost (epochs, CPU time, the teacher's share, converged or not) and the spread of
  training seeds: :mod:`espnet_prune.recipe.training`.
* WER confidence intervals, paired-bootstrap comparisons with the reference,
  ``--control`` and ``--pair`` models, and the PNG figures: :mod:`espnet_prune.recipe.evidence`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from espnet2.utils.types import str2bool

from espnet_prune.fileio import atomic_write_text
from espnet_prune.recipe import evidence, markdown, measure, training
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


# --------------------------------------------------------------------------- report


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
    p.add_argument("--latency_table", default=None,
                   help="latency table (espnet_prune.bin.latency): each model's predicted decode time")
    p.add_argument("--fast_decoder", type=str2bool, default=True,
                   help="also time each model with the fast exact decoder (espnet_prune.fast_decoding)")
    p.add_argument("--published", default=None, choices=sorted(PUBLISHED),
                   help="add published reference rows")
    p.add_argument("--training", action="append", default=[], metavar="NAME=[teacher+]DIR[,DIR]",
                   help="the training dirs that made --model NAME, for its training cost "
                        "(teacher+: it starts from the reference model; repeatable)")
    p.add_argument("--seed_group", action="append", default=[], metavar="NAME=OTHER[,OTHER]",
                   help="--model NAME and its retrainings with other seeds (repeatable)")
    p.add_argument("--output", required=True, help="Markdown output (RESULTS.md)")
    p.add_argument("--json", default=None, help="JSON output")
    evidence.add_options(p)  # --control, --pair, --bootstrap_*, --confidence, --plots*, --train_log
    return p



def build_rows(
    a: argparse.Namespace,
    models: Sequence[Tuple[str, Path]],
    wers: Dict[str, Dict[str, Any]],
    first_feats: Sequence[Tuple[str, np.ndarray]],
    latency_set: str,
) -> Tuple[List[Any], List[Dict[str, Any]]]:
    """Build every model (eval mode) and its row: size, MACs and WER.

    With ``--data_format raw`` the models need a frontend, and ``a.frames_per_second``
    becomes the reference model's frame rate; with features they must have none, and the
    input dimension of ``first_feats`` is checked against each.
    """
    from espnet_prune.model_io import build_asr_model

    table = None
    if a.latency_table:
        from espnet_prune.cost.latency import LatencyTable

        try:
            table = LatencyTable.from_conf(a.latency_table)
        except ValueError as e:
            raise ReportError(f"--latency_table: {e}") from None
    raw = a.data_format == "raw"
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
        for utt, mat in first_feats:
            if mat.shape[1] != size["input_size"]:
                raise ReportError(f"{Path(a.data_dir) / latency_set / 'feats.scp'}: {utt} has "
                                  f"{mat.shape[1]}-dim features, {name} expects "
                                  f"{size['input_size']}")
        if table is not None:  # at the utterance the table was measured on
            from espnet_prune.bin.latency import model_decode_seconds

            size["decode_cost_s"] = model_decode_seconds(
                model, args, table, table.seconds or a.macs_seconds, a.frames_per_second,
                table.steps or a.macs_tokens)
        built.append(model)
        rows.append({"name": name, "dir": str(d), **size, "wer": wers[name]})
    return built, rows


def add_ratios(rows: List[Dict[str, Any]]) -> None:
    """Size and cost ratios, and sparsities, of every row to the first (in place)."""
    base = rows[0]
    for r in rows:
        p, bp = r["params"], base["params"]
        r["params_ratio"] = p["total"] / bp["total"]
        r["encoder_params_ratio"] = p["encoder"] / bp["encoder"]
        r["macs_ratio"] = r["encoder_macs"] / base["encoder_macs"]
        r["decoder_token_macs_ratio"] = r["decoder_token_macs"] / base["decoder_token_macs"]
        r["inference_macs_ratio"] = r["inference_macs"] / base["inference_macs"]
        if "decode_cost_s" in r:
            r["decode_cost_ratio"] = r["decode_cost_s"] / base["decode_cost_s"]
        r["sparsity"] = {
            "params_whole_model": 1 - p["total"] / bp["total"],
            "params_encoder": 1 - p["encoder"] / bp["encoder"],
            "params_blocks": 1 - r["block_params"] / base["block_params"],
            "macs_encoder": 1 - r["encoder_macs"] / base["encoder_macs"],
            "macs_blocks": 1 - r["block_macs"] / base["block_macs"],
        }


def build_report(a: argparse.Namespace, command: str) -> Dict[str, Any]:
    """Measure everything and return the JSON-able report."""
    import torch

    # ---- check every input before any expensive work
    models = parse_models(a.model)
    if a.latency_utts < 0 or a.latency_repeats < 1 or a.decode_repeats < 0 or a.threads < 1:
        raise ReportError("--latency_utts >= 0, --latency_repeats >= 1, --decode_repeats >= 0 "
                          "and --threads >= 1 are required")
    if a.frames_per_second <= 0 or a.macs_seconds <= 0:
        raise ReportError("--frames_per_second and --macs_seconds must be positive")
    wers = {name: {s: read_wer(result_path(d, a.decode_name, s)) for s in a.test_sets}
            for name, d in models}
    names = [name for name, _ in models]
    evidence.check_options(a, names)
    try:
        trainings = training.parse_training(a.training, names)
        groups = training.parse_seed_groups(a.seed_group, names)
    except training.TrainingError as e:
        raise ReportError(str(e)) from None
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
        built, rows = build_rows(a, models, wers, [] if raw else utts[:1], latency_set)
        add_ratios(rows)

        # ---- timing
        timing_info: Dict[str, Any] = {"set": latency_set, "utterances": [u for u, _ in utts],
                                       "frames": [int(m.shape[0]) for _, m in utts]}
        timing_info["input_unit"] = "samples" if raw else "frames"
        audio_s = [m.shape[0] / (sample_rate if raw else a.frames_per_second) for _, m in utts]
        timing_info["audio_seconds"] = float(sum(audio_s))
        timing_info["loadavg_before"] = measure.loadavg()
        if timing:
            feats = [torch.from_numpy(np.array(m)) for _, m in utts]  # kaldiio gives read-only arrays
            for r, s in zip(rows, measure.time_encoders(built, feats, a.latency_repeats, audio_s)):
                r["encoder_latency"] = s
        if timing and a.decode_repeats > 0:
            decodes, timing_info["decode_repeatable"] = measure.time_decoders(
                models, options, feats, a.decode_repeats, audio_s, fast=a.fast_decoder)
            for r in rows:
                d = decodes[r["name"]]
                r["decode_espnet"] = dict(d["espnet"], decoder="espnet")
                r["decode"] = r["decode_espnet"]
                if "fast" in d:
                    r["decode"] = dict(d["fast"], decoder="fast")
                    r["fast_decoder_ratio"] = d["fast"]["total_s"] / d["espnet"]["total_s"]
                    r["fast_decoder_same_hyps"] = d["same_hyps"]
        timing_info["loadavg_after"] = measure.loadavg()
    finally:
        torch.set_num_threads(prev_threads)

    report: Dict[str, Any] = {
        "environment": measure.environment(a.threads),
        "command": command,
        "settings": {
            "reference_model": rows[0]["name"], "test_sets": list(a.test_sets),
            "data_dir": a.data_dir, "data_format": a.data_format, "decode_name": a.decode_name,
            "inference_config": a.inference_config, "inference_options": options,
            "inference_options_ignored": ignored, "latency_set": latency_set,
            "latency_utts": a.latency_utts, "latency_repeats": a.latency_repeats,
            "decode_repeats": a.decode_repeats, "threads": a.threads,
            "frames_per_second": a.frames_per_second, "macs_seconds": a.macs_seconds,
            "macs_tokens": a.macs_tokens,
            "fast_decoder": a.fast_decoder, "latency_table": a.latency_table,
        },
        "timing": timing_info,
        "statistics": evidence.attach_statistics(a, rows, utt_stats),
        "models": rows,
    }
    try:  # "training" and "seeds", when asked for
        report.update(training.report_entries(trainings, groups, evidence.parse_pairs(a.pair, names),
                                               rows, a.test_sets))
    except training.TrainingError as e:
        raise ReportError(str(e)) from None
    if a.published:
        pub = PUBLISHED[a.published]
        report["published"] = {
            "name": a.published, "label": pub["label"], "source": pub["source"],
            "wer": {s: {"Err": w, "Snt": n, "Wrd": nw} for s, (w, n, nw) in pub["wer"].items()},
            "matched_sets": [s for s in a.test_sets if s in pub["wer"]],
        }
    return report


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = get_parser().parse_args(argv)
    command = "python -m espnet_prune.recipe.report " + shlex.join(argv)
    report = build_report(a, command)
    report["plots"] = evidence.write_plots(a, report)  # PNGs beside --output
    md = markdown.format_markdown(report)
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
