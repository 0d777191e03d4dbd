"""ESPnet task for pruning: ``ASRTask`` plus the plugin's classes and three optimizers.

Optimizers (ESPnet's ``--optim``, ``--optim2``, ``--optim3`` options, each with its
``_conf`` and ``--scheduler{,2,3}``):

1. ``optim``: model weights (and the layer-distillation map);
2. ``optim2``: gate ``log_alpha`` (default adam, lr 0.1, betas 0.9/0.9);
3. ``optim3``: Lagrange multipliers, maximised (default adam, lr 0.02); absent when a
   family of sizes trains (:mod:`espnet_prune.family`: no multipliers).

A model without gates (the dense baseline) gets only the first optimizer, so the
same entry point trains every stage of the recipe. Checkpoints are written atomically, so
a run killed while saving resumes from the previous epoch.
"""

from __future__ import annotations

import argparse
from typing import List

import torch
from espnet2.optimizers.optim_groups import configure_optimizer
from espnet2.tasks.abs_task import optim_classes
from espnet2.tasks.asr import ASRTask

import espnet_prune
from espnet_prune.fileio import atomic_torch_saves
from espnet_prune.model import ESPnetPruneASRModel

espnet_prune.register()  # also in DDP worker processes, which import this module


class PruneASRTask(ASRTask):
    num_optimizers: int = 3

    @classmethod
    def get_parser(cls) -> argparse.ArgumentParser:
        parser = super().get_parser()
        parser.set_defaults(
            optim2="adam", optim2_conf={"lr": 0.1, "betas": [0.9, 0.9]},
            optim3="adam", optim3_conf={"lr": 0.02},
        )
        return parser

    @classmethod
    def main_worker(cls, args: argparse.Namespace) -> None:
        """ESPnet's worker (every process of a distributed run too), its checkpoints and
        models written atomically (:func:`espnet_prune.fileio.atomic_torch_saves`)."""
        with atomic_torch_saves():
            super().main_worker(args)

    @classmethod
    def build_model(cls, args: argparse.Namespace):
        model = super().build_model(args)
        if isinstance(model, ESPnetPruneASRModel):
            # ESPnet's `init` ran after the student copied the teacher: copy again.
            model.init_from_teacher()
        return model

    @classmethod
    def build_optimizers(cls, args: argparse.Namespace, model: torch.nn.Module) -> List[torch.optim.Optimizer]:
        groups = split_parameters(model)
        if not groups["gates"] and not groups["lagrangian"]:  # dense model: ESPnet's behaviour
            optim_class = _optim_class(args, "")
            if args.exclude_weight_decay:
                return [configure_optimizer(model, optim_class, args.optim_conf, args.exclude_weight_decay_conf)]
            return [optim_class(model.parameters(), **args.optim_conf)]
        if args.exclude_weight_decay:
            raise ValueError("--exclude_weight_decay is not supported for pruning runs")
        optimizers = []
        for suf, name in (("", "weights"), ("2", "gates"), ("3", "lagrangian")):
            if name == "lagrangian" and not groups[name]:  # a family: no multipliers
                continue
            optim_class = _optim_class(args, suf)
            params = [p for _, p in groups[name]]
            optimizers.append(optim_class(params, **getattr(args, f"optim{suf}_conf")))
        return optimizers


def _optim_class(args: argparse.Namespace, suf: str) -> type:
    name = getattr(args, f"optim{suf}")
    optim_class = optim_classes.get(name)
    if optim_class is None:
        raise ValueError(f"--optim{suf}: must be one of {list(optim_classes)}, got {name}")
    return optim_class


def split_parameters(model: torch.nn.Module) -> dict:
    """Trainable (name, param) pairs split into weights / gates / lagrangian."""
    groups = {"weights": [], "gates": [], "lagrangian": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("log_alpha"):
            groups["gates"].append((name, p))
        elif name.startswith("pruning.lambda"):
            groups["lagrangian"].append((name, p))
        else:
            groups["weights"].append((name, p))
    return groups
