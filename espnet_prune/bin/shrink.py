"""Shrink a gated ASR model into a plain ESPnet model with a ``pruned_conformer`` encoder.

Also exports a distillation fine-tuned (``model: prune_espnet`` with an already
shrunk encoder) as a plain ESPnet model: training-only state is dropped.

    python -m espnet_prune.bin.shrink --asr_train_config exp/prune/config.yaml \
        --asr_model_file exp/prune/valid.acc.ave.pth --output_dir exp/prune/shrunk

writes ``OUTPUT_DIR/config.yaml`` and ``OUTPUT_DIR/model.pth`` (atomically), then
rebuilds the model from them with every key matched, and prints a JSON summary
(also written to ``OUTPUT_DIR/summary.json``). A pruning run's structure is
chosen by the exact-target rule (:mod:`espnet_prune.budget`) against its
``model_conf.target``; the target and the achieved sparsity are printed side by
side (stderr) and recorded under ``target`` in the summary.

``--target KIND:X`` picks another size from the same checkpoint: the structure is a
prefix of the gates' ranking (:func:`~espnet_prune.budget.select_nested`), so shrinking
one checkpoint at several targets gives nested models (what a smaller one keeps, every
larger one keeps), each within the rule's bound of its target. A family checkpoint
(``model_conf.target: {params: [0.3, 0.5, 0.7]}``, :mod:`espnet_prune.family`) is shrunk
at its middle target by default, and at any ``--target`` with the units ranked at the
middle member's shift and the kept gates valued at the chosen member's own::

    for t in 0.3 0.5 0.7; do python -m espnet_prune.bin.shrink --target params:$t \
        --asr_train_config exp/prune/final_gated/config.yaml \
        --asr_model_file exp/prune/final_gated/model.pth --output_dir exp/prune/shrunk_$t; done
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from espnet_prune.fileio import atomic_write_text
from espnet_prune.model_io import build_asr_model, param_breakdown, save_asr_model


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--asr_train_config", required=True, help="config.yaml of the gated model")
    p.add_argument("--asr_model_file", required=True, help="weights of the gated model (.pth)")
    p.add_argument("--output_dir", required=True, help="where config.yaml and model.pth go")
    p.add_argument("--target", default=None, metavar="KIND:X",
                   help="shrink to this target instead of the run's own (the nested rule: a "
                        "prefix of the gates' ranking; e.g. params:0.3)")
    return p


def main(cmd: Optional[List[str]] = None) -> dict:
    args = get_parser().parse_args(cmd)
    from espnet_prune.cost import sparsity, structure_cost
    from espnet_prune.encoder import GatedConformerEncoder
    from espnet_prune.family import member_selector
    from espnet_prune.model import eval_target_from_args, family_targets_from_args, plain_asr_args
    from espnet_prune.target_kinds import parse_target
    from espnet_prune.targets import CostContext, build_selector, model_params
    from espnet_prune.model_io import load_train_args
    from espnet_prune.shrink import shrink_asr_model

    raw_args = load_train_args(args.asr_train_config)
    train_args = plain_asr_args(raw_args)
    gated, _ = build_asr_model(train_args, args.asr_model_file, drop_prefixes=("pruning.",))
    gated.eval()
    target = eval_target_from_args(raw_args)
    family = family_targets_from_args(raw_args)
    reference = target[1] if family else None  # a family's units are ranked at its middle member
    rule = "nested" if family else "exact"
    if args.target is not None:
        kind, _, value = args.target.partition(":")
        try:
            kind, value = parse_target({kind: value})
        except ValueError as e:
            raise SystemExit(f"--target {args.target}: {e}") from None
        if family and kind != target[0]:
            raise SystemExit(f"--target {args.target}: this checkpoint is a family of "
                             f"{target[0]} targets {family}; pick a {target[0]} target")
        ctx = target[2] if target is not None else CostContext()
        target, rule = (kind, value, ctx), "nested"
    achieved = None
    if isinstance(gated.encoder, GatedConformerEncoder):
        if reference is not None:
            selector = member_selector(gated, target[0], target[1], reference, target[2])
            achieved = selector.achieved_sparsity()
        elif target is not None:  # the exact-target rule: the structure meets the budget
            selector = build_selector(gated, *target, rule=rule).attach()
            achieved = selector.achieved_sparsity()
        shrunk, shrunk_args = shrink_asr_model(gated, train_args)
    else:
        shrunk, shrunk_args = gated, train_args
    out = Path(args.output_dir)
    save_asr_model(out, shrunk, shrunk_args)
    # Self-description check: rebuild from what was written, every key matched.
    rebuilt, _ = build_asr_model(out / "config.yaml", out / "model.pth")
    before, after = param_breakdown(gated), param_breakdown(rebuilt)
    gates = getattr(gated.encoder, "gate_parameters", lambda: [])()
    summary = {
        "output_dir": str(out),
        "params_gated_model": before["total"] - sum(p.numel() for p in gates),
        "params_shrunk_model": after["total"],
        "encoder_params": after["encoder"],
    }
    dims = getattr(rebuilt.encoder, "dims", None)  # None: a dense ESPnet encoder, exported as is
    if dims is not None:
        seconds, fps = (target[2].seconds, target[2].frames_per_second) if target is not None else (10.0, 100.0)
        dense = structure_cost(dims.dense_dims(), dims.dense_structure(), seconds, fps)
        pruned = structure_cost(dims, rebuilt.encoder.structure(), seconds, fps)
        summary.update({
            "block_params_sparsity": float(sparsity(pruned["block_params"], dense["block_params"])),
            "block_macs_sparsity": float(sparsity(pruned["block_macs"], dense["block_macs"])),
            "encoder_macs_sparsity": float(sparsity(pruned["macs"], dense["macs"])),
            "block_structures": [s.to_dict() for s in rebuilt.encoder.structure()],
        })
        if dims.subsampling_channels is not None:
            summary["subsampling_channels"] = list(dims.subsampling_channels)
    summary["params_sparsity"] = 1.0 - after["total"] / model_params(gated)
    if target is not None:
        kind, value = target[0], target[1]
        summary["target"] = {"kind": kind, "sparsity": value, "achieved": achieved}
        if rule != "exact":
            summary["target"]["rule"] = rule
        if family:
            summary["target"]["family"] = family
        print(f"{kind} sparsity: target {value:.4f}, achieved {achieved:.4f}", file=sys.stderr)
    text = json.dumps(summary, indent=1)
    atomic_write_text(out / "summary.json", text + "\n")
    print(text)
    return summary


if __name__ == "__main__":
    main()
