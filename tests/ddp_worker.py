"""Test-only launcher for one DDP rank: ``espnet_prune.bin.asr_train`` plus a state dump.

    python tests/ddp_worker.py DUMP_DIR <asr_train options...>

Runs the plugin's training entry point unchanged, with two observers installed
(nothing in ``espnet_prune`` is modified):

* the ``DistributedDataParallel`` wrapper that ESPnet's trainer builds is recorded;
* when ``Trainer.run`` returns, the rank writes ``DUMP_DIR/rank{R}.pth`` with the
  student's ``state_dict()``, its eval-mode selection (the exact-target rule's kept
  unit indices), the DDP module's parameter names and state keys, and how many of
  the teacher's parameters DDP holds.

ESPnet's rank 0 writes checkpoints; the other ranks write nothing, hence the dump.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List

import torch


def _selection(model: torch.nn.Module) -> Dict[str, Dict[str, List[int]]]:
    """Eval-mode kept indices, per part and unit key (str keys: picklable, comparable)."""
    return {
        part: {str(key): idx.tolist() for key, idx in keep.items()}
        for part, keep in model.selector.selection().items()
    }


def main(argv: List[str]) -> None:
    dump_dir, cmd = Path(argv[0]), argv[1:]
    from espnet2.train.trainer import Trainer

    wrappers: List[torch.nn.parallel.DistributedDataParallel] = []
    ddp_init = torch.nn.parallel.DistributedDataParallel.__init__

    def recording_init(self, module, *args: Any, **kwargs: Any) -> None:
        ddp_init(self, module, *args, **kwargs)
        wrappers.append(self)

    torch.nn.parallel.DistributedDataParallel.__init__ = recording_init
    run = Trainer.run.__func__

    def dumping_run(cls, model, *args: Any, **kwargs: Any) -> None:
        run(cls, model, *args, **kwargs)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        teacher = {id(p) for p in model.teacher.parameters()}
        ddp = wrappers[-1] if wrappers else None
        model.eval()
        dump = {
            "rank": rank,
            "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
            "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "selection": _selection(model),
            "ddp_wraps_model": ddp is not None and ddp.module is model,
            "ddp_param_names": [n for n, _ in ddp.named_parameters()] if ddp is not None else [],
            "ddp_state_keys": list(ddp.state_dict()) if ddp is not None else [],
            "ddp_teacher_params": sum(id(p) in teacher for p in ddp.parameters()) if ddp is not None else 0,
            "teacher_params": len(teacher),
            "teacher_trainable": sum(p.requires_grad for p in model.teacher.parameters()),
        }
        dump_dir.mkdir(parents=True, exist_ok=True)
        tmp = dump_dir / f".rank{rank}.pth.tmp"
        torch.save(dump, tmp)
        tmp.rename(dump_dir / f"rank{rank}.pth")

    Trainer.run = classmethod(dumping_run)
    from espnet_prune.bin.asr_train import main as train_main

    train_main(cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
