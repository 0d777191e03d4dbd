"""Shrink a gated ASR model into a plain ESPnet model with a ``pruned_conformer`` encoder.

    python -m espnet_prune.bin.shrink --asr_train_config exp/prune/config.yaml \
        --asr_model_file exp/prune/valid.acc.ave.pth --output_dir exp/prune/shrunk

writes ``OUTPUT_DIR/config.yaml`` and ``OUTPUT_DIR/model.pth`` (atomically), then
rebuilds the model from them with every key matched, and prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional

from espnet_prune.model_io import build_asr_model, param_breakdown, save_asr_model


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--asr_train_config", required=True, help="config.yaml of the gated model")
    p.add_argument("--asr_model_file", required=True, help="weights of the gated model (.pth)")
    p.add_argument("--output_dir", required=True, help="where config.yaml and model.pth go")
    return p


def main(cmd: Optional[List[str]] = None) -> dict:
    args = get_parser().parse_args(cmd)
    from espnet_prune.cost import sparsity
    from espnet_prune.shrink import shrink_asr_model

    gated, train_args = build_asr_model(args.asr_train_config, args.asr_model_file)
    gated.eval()
    shrunk, shrunk_args = shrink_asr_model(gated, train_args)
    out = Path(args.output_dir)
    save_asr_model(out, shrunk, shrunk_args)
    # Self-description check: rebuild from what was written, every key matched.
    rebuilt, _ = build_asr_model(out / "config.yaml", out / "model.pth")
    before, after = param_breakdown(gated), param_breakdown(rebuilt)
    dense_cost = gated.encoder.dims.dense_structure()
    from espnet_prune.cost import structure_cost

    dense = structure_cost(gated.encoder.dims, dense_cost)
    pruned = structure_cost(rebuilt.encoder.dims, rebuilt.encoder.structure())
    summary = {
        "output_dir": str(out),
        "params_gated_model": before["total"] - sum(p.numel() for p in gated.encoder.gate_parameters()),
        "params_shrunk_model": after["total"],
        "encoder_params": after["encoder"],
        "block_params_sparsity": float(sparsity(pruned["block_params"], dense["block_params"])),
        "encoder_macs_sparsity": float(sparsity(pruned["macs"], dense["macs"])),
        "block_structures": [s.to_dict() for s in rebuilt.encoder.structure()],
    }
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
