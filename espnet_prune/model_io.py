"""Loading and saving ESPnet ASR models with explicit key checks."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import yaml

from espnet_prune.fileio import atomic_write_bytes

PathLike = Union[str, os.PathLike]


def load_train_args(config_file: PathLike) -> argparse.Namespace:
    """Read an ESPnet training ``config.yaml`` into a Namespace."""
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with path.open(encoding="utf-8") as f:
        try:
            args = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(args, dict):
        raise ValueError(f"{path}: expected a mapping of training options")
    return argparse.Namespace(**args)


def build_asr_model(
    config: Union[PathLike, argparse.Namespace],
    model_file: Optional[PathLike] = None,
    device: str = "cpu",
    drop_prefixes: Tuple[str, ...] = (),
) -> Tuple[torch.nn.Module, argparse.Namespace]:
    """Build an ESPnet ASR model from a ``config.yaml`` (or its args) and load ``model_file``.

    Unlike ``ASRTask.build_model_from_file`` every key must match; mismatches
    are named in the error. Checkpoint keys starting with ``drop_prefixes``
    (training-only state) are ignored.
    """
    import espnet_prune
    from espnet2.tasks.asr import ASRTask

    from espnet_prune.shrink import load_strict

    espnet_prune.register()
    args = config if isinstance(config, argparse.Namespace) else load_train_args(config)
    model = ASRTask.build_model(args)
    if model_file is not None:
        path = Path(model_file)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: not a readable PyTorch state dict: {e}") from e
        if drop_prefixes:
            state = {k: v for k, v in state.items() if not k.startswith(drop_prefixes)}
        load_strict(model, state, what=str(path))
    return model.to(device), args


def save_asr_model(
    output_dir: PathLike, model: torch.nn.Module, args: argparse.Namespace
) -> Tuple[Path, Path]:
    """Write ``config.yaml`` and ``model.pth`` atomically into ``output_dir``."""
    import io

    out = Path(output_dir)
    config = out / "config.yaml"
    weights = out / "model.pth"
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    atomic_write_bytes(weights, buf.getvalue())
    text = yaml.safe_dump(_plain(vars(args)), sort_keys=False, allow_unicode=True)
    atomic_write_bytes(config, text.encode("utf-8"))
    return config, weights


def _plain(obj: Any) -> Any:
    """Convert to YAML-safe plain Python types."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def count_params(module: Optional[torch.nn.Module]) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def param_breakdown(model: torch.nn.Module) -> Dict[str, int]:
    """Parameters of the whole ASR model and of its encoder / decoder / CTC."""
    return {
        "total": count_params(model),
        "encoder": count_params(getattr(model, "encoder", None)),
        "decoder": count_params(getattr(model, "decoder", None)),
        "ctc": count_params(getattr(model, "ctc", None)),
    }
