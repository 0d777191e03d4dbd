"""The comparison models of the recipe: an equal-budget dense control and same-size baselines.

Every command writes atomically and names the file or key it rejects.

    # dense control: the teacher trained on for the pruning + fine-tuning updates
    python -m espnet_prune.recipe.same_size control_config --train_config conf/train.yaml \
        --prune_config conf/prune.yaml --finetune_config conf/finetune.yaml --output exp/c/train.yaml
    # epochs of a budget (sum of max_epoch)
    python -m espnet_prune.recipe.same_size epochs conf/prune.yaml conf/finetune.yaml
    # whole-model parameters of a model dir (config.yaml + model.pth)
    python -m espnet_prune.recipe.same_size params exp/p/final
    # one-shot magnitude pruning of the teacher to N parameters (-> config.yaml, model.pth, summary.json)
    python -m espnet_prune.recipe.same_size magnitude --teacher_dir exp/b/final \
        --prune_config conf/prune.yaml --params N --output_dir exp/mag/shrunk
    # whole encoder blocks / decoder layers dropped from the teacher to about N parameters
    python -m espnet_prune.recipe.same_size layerdrop --teacher_dir exp/b/final --params N --output_dir D
    # a dense model of about N parameters, to train from scratch
    python -m espnet_prune.recipe.same_size scratch_config --teacher_dir exp/b/final \
        --train_config conf/train.yaml --params N --output exp/s/train.yaml
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from espnet_prune.fileio import atomic_write_text

#: options that decide how many updates an epoch has
BATCH_KEYS = ("batch_type", "batch_size", "batch_bins", "accum_grad", "num_iters_per_epoch",
              "max_epoch")
#: the gate options of gated_conformer / gated_transformer (the rest is the dense architecture)
GATE_KEYS = ("gate_granularities", "gate_conf")


def read_yaml(path: Path) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of training options")
    return data


def max_epoch(path: Path) -> int:
    value = read_yaml(path).get("max_epoch")
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{path}: max_epoch must be a positive integer, got {value!r}")
    return value


# ----------------------------------------------------------------------------- control


def control_config(train_config: Path, prune_config: Path, finetune_config: Path) -> Dict[str, Any]:
    """Training config of the equal-budget dense control.

    The teacher's architecture and data options (``train_config``), trained (from the
    teacher's weights, ``--init_param``) for ``max_epoch(prune) + max_epoch(finetune)``
    epochs with the pruning run's batches, so it makes exactly as many updates as
    pruning plus fine-tuning. Its optimizer is the pruning run's, and when neither
    pruning nor fine-tuning uses a scheduler the learning rate follows theirs: the
    pruning lr for the pruning epochs, then the fine-tuning lr (``steplr``).
    """
    conf = read_yaml(train_config)
    prune, finetune = read_yaml(prune_config), read_yaml(finetune_config)
    for key in BATCH_KEYS[:-1]:
        if prune.get(key) != finetune.get(key):
            raise ValueError(f"{finetune_config}: {key}={finetune.get(key)!r} differs from "
                             f"{prune_config}: {key}={prune.get(key)!r}; the control's update count "
                             "would not equal pruning + fine-tuning")
        if key in prune:
            conf[key] = prune[key]
        else:
            conf.pop(key, None)
    e_prune, e_ft = max_epoch(prune_config), max_epoch(finetune_config)
    conf["max_epoch"] = e_prune + e_ft
    conf.pop("patience", None)  # exactly as many updates: no early stopping
    conf.pop("early_stopping_criterion", None)
    conf.pop("val_scheduler_criterion", None)
    conf["optim"] = prune.get("optim", "adam")
    conf["optim_conf"] = dict(prune.get("optim_conf") or {})
    conf.pop("scheduler", None)
    conf.pop("scheduler_conf", None)
    lr_p = conf["optim_conf"].get("lr")
    lr_f = (finetune.get("optim_conf") or {}).get("lr")
    if prune.get("scheduler") or finetune.get("scheduler"):
        if prune.get("scheduler"):
            conf["scheduler"] = prune["scheduler"]
            conf["scheduler_conf"] = dict(prune.get("scheduler_conf") or {})
    elif lr_p and lr_f and finetune.get("optim", "adam") == conf["optim"] and lr_f != lr_p:
        conf["scheduler"] = "steplr"
        conf["scheduler_conf"] = {"step_size": e_prune, "gamma": float(lr_f) / float(lr_p)}
    return conf


# ----------------------------------------------------------------------------- magnitude


def gated_args(teacher: argparse.Namespace, prune: Dict[str, Any]) -> argparse.Namespace:
    """The teacher's training args with its encoder (and decoder, when the prune config
    gates it) replaced by the gated classes: architecture from the teacher, gate
    options from the prune config."""
    args = copy.deepcopy(teacher)
    if teacher.encoder != "conformer":
        raise ValueError(f"teacher encoder {teacher.encoder!r}: magnitude pruning needs a dense conformer")
    args.encoder = "gated_conformer"
    args.encoder_conf = dict(teacher.encoder_conf or {})
    args.encoder_conf.update({k: v for k, v in (prune.get("encoder_conf") or {}).items() if k in GATE_KEYS})
    if prune.get("decoder") == "gated_transformer":
        if teacher.decoder != "transformer":
            raise ValueError(f"teacher decoder {teacher.decoder!r}: the prune config gates a transformer decoder")
        args.decoder = "gated_transformer"
        args.decoder_conf = dict(teacher.decoder_conf or {})
        args.decoder_conf.update({k: v for k, v in (prune.get("decoder_conf") or {}).items() if k in GATE_KEYS})
    return args


def load_teacher_into(model, teacher_file: Path) -> None:
    """Load dense teacher weights into a gated model: every teacher key must be used and
    only gate parameters may be left out."""
    import torch

    from espnet_prune.shrink import load_strict

    state = torch.load(teacher_file, map_location="cpu", weights_only=True)
    load_strict(model, state, what=f"{teacher_file} into the gated model", may_miss=("log_alpha",))


def magnitude(teacher_dir: Path, prune_config: Path, params: int, output_dir: Path,
              seconds: float = 10.0) -> Dict[str, Any]:
    """One-shot magnitude pruning of the teacher to ``params`` whole-model parameters at
    the prune config's granularities, shrunk into a plain ESPnet model."""
    from espnet_prune.magnitude import magnitude_prune
    from espnet_prune.model_io import build_asr_model, load_train_args
    from espnet_prune.shrink import shrink_asr_model
    from espnet_prune.targets import CostContext, build_selector, model_params

    teacher = load_train_args(Path(teacher_dir) / "config.yaml")
    args = gated_args(teacher, read_yaml(prune_config))
    model, _ = build_asr_model(args)
    load_teacher_into(model, Path(teacher_dir) / "model.pth")
    dense = model_params(model)
    if not 0 < params < dense:
        raise ValueError(f"--params {params} must be between 0 and the teacher's {dense}")
    selector = build_selector(model.eval(), "params", 1.0 - params / dense, CostContext(seconds=seconds))
    magnitude_prune(model, selector)
    shrunk, shrunk_args = shrink_asr_model(model, args)
    return _save(output_dir, shrunk, shrunk_args, params, dense,
                 {"method": "magnitude", "achieved_sparsity": selector.achieved_sparsity()})


# ----------------------------------------------------------------------------- layerdrop


def spread(n: int, k: int) -> List[int]:
    """``k`` of ``n`` layer indices (0-based), evenly spaced, the last layer always kept."""
    if not 1 <= k <= n:
        raise ValueError(f"cannot keep {k} of {n} layers")
    if k == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def layerdrop_plan(total: int, block: int, n_blocks: int, layer: int, n_layers: int,
                   params: int) -> Tuple[int, int]:
    """(encoder blocks, decoder layers) kept whose whole-model size is closest to
    ``params`` (ties: the larger model), at least one of each."""
    best = None
    for ke in range(1, n_blocks + 1):
        for kd in range(min(1, n_layers), n_layers + 1):
            size = total - (n_blocks - ke) * block - (n_layers - kd) * layer
            key = (abs(size - params), -size)
            if best is None or key < best[0]:
                best = (key, (ke, kd))
    return best[1]


def layerdrop(teacher_dir: Path, params: int, output_dir: Path) -> Dict[str, Any]:
    """Drop whole encoder blocks and decoder layers (evenly spaced, :func:`spread`) from
    the dense teacher to the size closest to ``params``."""
    from espnet_prune.model_io import build_asr_model, count_params
    from espnet_prune.shrink import load_strict

    teacher, args = build_asr_model(Path(teacher_dir) / "config.yaml", Path(teacher_dir) / "model.pth")
    if args.encoder != "conformer":
        raise ValueError(f"{teacher_dir}/config.yaml: layerdrop needs a dense conformer, found {args.encoder!r}")
    blocks = teacher.encoder.encoders
    layers = getattr(teacher.decoder, "decoders", None) if teacher.decoder is not None else None
    n_layers = len(layers) if layers is not None else 0
    total = count_params(teacher)
    block = count_params(blocks[0])
    layer = count_params(layers[0]) if n_layers else 0
    if any(count_params(b) != block for b in blocks) or any(count_params(l) != layer for l in (layers or [])):
        raise ValueError(f"{teacher_dir}: blocks of different sizes; layerdrop expects a dense teacher")
    ke, kd = layerdrop_plan(total, block, len(blocks), layer, n_layers, params)
    keep_enc, keep_dec = spread(len(blocks), ke), (spread(n_layers, kd) if n_layers else [])
    # the kept layers, renumbered, as a pruned_conformer (dense blocks) and a pruned_transformer,
    # the classes the shrinker writes: the same inference path and fine-tuning as the pruned model
    from espnet_prune.pruned_encoder import pruned_encoder_conf
    from espnet_prune.structure import ConformerDims

    new_args = copy.deepcopy(args)
    enc_conf = dict(args.encoder_conf or {}, num_blocks=ke)
    new_args.encoder = "pruned_conformer"
    new_args.encoder_conf = pruned_encoder_conf(
        enc_conf, ConformerDims.from_encoder_conf(int(getattr(args, "input_size", None) or 0), enc_conf).dense_structure())
    renumber = {f"encoder.encoders.{o}.": f"encoder.encoders.{n}." for n, o in enumerate(keep_enc)}
    renumber.update({f"decoder.decoders.{o}.": f"decoder.decoders.{n}." for n, o in enumerate(keep_dec)})
    state = {}
    for key, value in teacher.state_dict().items():
        if key.startswith(("encoder.encoders.", "decoder.decoders.")):
            prefix = ".".join(key.split(".")[:3]) + "."
            if prefix not in renumber:
                continue
            key = renumber[prefix] + key[len(prefix):]
        state[key] = value
    if n_layers:
        new_args.decoder_conf = dict(args.decoder_conf or {}, num_blocks=kd)
    model, _ = build_asr_model(new_args)
    if n_layers and args.decoder == "transformer":
        from espnet_prune.shrink import fast_decoder

        load_strict(model, state, what=f"{teacher_dir}/model.pth (layers {keep_enc} / {keep_dec})")
        model.decoder, new_args.decoder = fast_decoder(model.decoder)
    else:
        load_strict(model, state, what=f"{teacher_dir}/model.pth (layers {keep_enc} / {keep_dec})")
    return _save(output_dir, model, new_args, params, total,
                 {"method": "layerdrop", "encoder_blocks_kept": [i + 1 for i in keep_enc],
                  "decoder_layers_kept": [i + 1 for i in keep_dec]})


# ----------------------------------------------------------------------------- scratch


def _count(args: argparse.Namespace) -> int:
    from espnet_prune.model_io import build_asr_model, count_params

    model, _ = build_asr_model(args)
    return count_params(model)


def scratch_dims(teacher: argparse.Namespace, params: int) -> Tuple[Dict[str, Any], Dict[str, Any], int]:
    """Encoder / decoder options of a dense model of about ``params`` parameters, sized as a
    user would: the teacher's depth and heads, a narrower model dimension (a multiple of
    the head count) with the teacher's FFN-to-model ratio, then the FFN width of the
    encoder and decoder (together) adjusted to land as close to ``params`` as possible.
    Returns (encoder_conf, decoder_conf, their model's parameter count)."""
    enc = dict(teacher.encoder_conf or {})
    dec = dict(teacher.decoder_conf or {})
    d0, heads = int(enc["output_size"]), int(enc.get("attention_heads", 4))
    dec_heads = int(dec.get("attention_heads", heads)) if teacher.decoder else heads
    step = heads * dec_heads // math.gcd(heads, dec_heads)
    r_enc = int(enc.get("linear_units", 4 * d0)) / d0
    r_dec = int(dec.get("linear_units", 4 * d0)) / d0 if teacher.decoder else 0

    def build(d: int, units: Optional[Tuple[int, int]] = None) -> Tuple[argparse.Namespace, int]:
        args = copy.deepcopy(teacher)
        ue, ud = units or (max(1, round(r_enc * d)), max(1, round(r_dec * d)))
        args.encoder_conf = dict(enc, output_size=d, linear_units=ue)
        if teacher.decoder:
            args.decoder_conf = dict(dec, linear_units=ud)
        return args, _count(args)

    lo, hi = 1, d0 // step  # d = m * step, size increases with m
    if build(hi * step)[1] < params:
        raise ValueError(f"--params {params}: not smaller than the teacher")
    while lo < hi:  # smallest m whose size reaches params
        m = (lo + hi) // 2
        if build(m * step)[1] >= params:
            hi = m
        else:
            lo = m + 1
    def fit_units(d: int) -> Tuple[argparse.Namespace, int]:
        """FFN widths at model dimension ``d`` that land closest to ``params`` (the size is
        linear in the number of units; encoder and decoder FFNs scaled together)."""
        ue0, ud0 = max(1, round(r_enc * d)), max(1, round(r_dec * d))
        _, base = build(d, (ue0, ud0))
        _, plus = build(d, (ue0 + 100, ud0 + round(100 * r_dec / r_enc)))
        delta = round((params - base) / (plus - base) * 100)
        return build(d, (max(1, ue0 + delta), max(1, ud0 + round(delta * r_dec / r_enc))))

    # the two widths around the target: the larger with narrower FFNs, the smaller with wider
    candidates = [fit_units(m * step) for m in (lo - 1, lo) if m >= 1]
    args, size = min(candidates, key=lambda c: abs(c[1] - params))
    return args.encoder_conf, (args.decoder_conf if teacher.decoder else {}), size


def converges(conf: Dict[str, Any]) -> bool:
    """Does a training config stop by itself (ESPnet's ``patience`` on an
    ``early_stopping_criterion``), ``max_epoch`` only capping it?"""
    return isinstance(conf.get("patience"), int) and bool(conf.get("early_stopping_criterion"))


def scratch_config(teacher_dir: Path, train_config: Path, params: int,
                   budget_epochs: Optional[int] = None) -> Tuple[Dict[str, Any], int]:
    """``train_config`` with the encoder / decoder sized by :func:`scratch_dims`.

    Trained as the teacher was: to convergence when ``train_config`` converges
    (:func:`converges`), else for ``budget_epochs`` (the teacher's, pruning's and
    fine-tuning's epochs: the pruned model's whole training budget).
    """
    from espnet_prune.model_io import load_train_args

    teacher = load_train_args(Path(teacher_dir) / "config.yaml")
    enc, dec, size = scratch_dims(teacher, params)
    conf = read_yaml(train_config)
    if budget_epochs is not None and not converges(conf):
        conf["max_epoch"] = int(budget_epochs)
    conf["encoder_conf"] = {**(conf.get("encoder_conf") or {}), "output_size": enc["output_size"],
                            "linear_units": enc["linear_units"]}
    if dec:
        conf["decoder_conf"] = {**(conf.get("decoder_conf") or {}), "linear_units": dec["linear_units"]}
    return conf, size


# ----------------------------------------------------------------------------- helpers


def model_dir_params(model_dir: Path) -> int:
    """Whole-model parameters of a saved model (``config.yaml`` + ``model.pth``)."""
    from espnet_prune.model_io import build_asr_model, count_params

    model, _ = build_asr_model(Path(model_dir) / "config.yaml", Path(model_dir) / "model.pth")
    return count_params(model)


def _save(output_dir: Path, model, args, params: int, dense: int, extra: Dict[str, Any]) -> Dict[str, Any]:
    from espnet_prune.model_io import build_asr_model, count_params, save_asr_model

    out = Path(output_dir)
    save_asr_model(out, model, args)
    rebuilt, _ = build_asr_model(out / "config.yaml", out / "model.pth")  # every key checked
    size = count_params(rebuilt)
    summary = {**extra, "params_requested": int(params), "params_shrunk_model": size,
               "params_teacher": int(dense), "size_error": size / params - 1.0}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("control_config")
    for name in ("--train_config", "--prune_config", "--finetune_config", "--output"):
        c.add_argument(name, type=Path, required=True)
    e = sub.add_parser("epochs")
    e.add_argument("configs", type=Path, nargs="+")
    q = sub.add_parser("params")
    q.add_argument("model_dir", type=Path)
    m = sub.add_parser("magnitude")
    m.add_argument("--teacher_dir", type=Path, required=True)
    m.add_argument("--prune_config", type=Path, required=True)
    m.add_argument("--params", type=int, required=True)
    m.add_argument("--output_dir", type=Path, required=True)
    l = sub.add_parser("layerdrop")
    l.add_argument("--teacher_dir", type=Path, required=True)
    l.add_argument("--params", type=int, required=True)
    l.add_argument("--output_dir", type=Path, required=True)
    s = sub.add_parser("scratch_config")
    for name in ("--teacher_dir", "--train_config", "--output"):
        s.add_argument(name, type=Path, required=True)
    s.add_argument("--params", type=int, required=True)
    s.add_argument("--budget_epochs", type=int, default=None,
                   help="max_epoch unless the training config converges by itself")
    a = p.parse_args(argv)
    if a.cmd == "control_config":
        conf = control_config(a.train_config, a.prune_config, a.finetune_config)
        atomic_write_text(a.output, yaml.safe_dump(conf, sort_keys=False))
    elif a.cmd == "epochs":
        print(sum(max_epoch(c) for c in a.configs))
    elif a.cmd == "params":
        print(model_dir_params(a.model_dir))
    elif a.cmd == "magnitude":
        print(json.dumps(magnitude(a.teacher_dir, a.prune_config, a.params, a.output_dir)))
    elif a.cmd == "layerdrop":
        print(json.dumps(layerdrop(a.teacher_dir, a.params, a.output_dir)))
    else:
        conf, size = scratch_config(a.teacher_dir, a.train_config, a.params, a.budget_epochs)
        atomic_write_text(a.output, yaml.safe_dump(conf, sort_keys=False))
        print(json.dumps({"params_requested": a.params, "params": size, "size_error": size / a.params - 1.0,
                          "encoder_conf": conf["encoder_conf"], "decoder_conf": conf.get("decoder_conf")}))


if __name__ == "__main__":
    main()
