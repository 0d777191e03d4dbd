"""ESPnet's ``asr_train`` with the pruning task: every ``espnet2.bin.asr_train`` option works.

    # dense baseline (teacher), a stock ESPnet Conformer config
    python -m espnet_prune.bin.asr_train --config conf/train_asr_conformer.yaml ...
    # pruning run: model prune_espnet + encoder gated_conformer; the config is the teacher's
    # architecture merged with the pruning options (espnet_prune.recipe.teacher prune_config)
    python -m espnet_prune.bin.asr_train --config exp/prune_params0.5/prune_config.yaml ...
"""

from typing import List, Optional


def main(cmd: Optional[List[str]] = None) -> None:
    from espnet_prune.task import PruneASRTask

    PruneASRTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
