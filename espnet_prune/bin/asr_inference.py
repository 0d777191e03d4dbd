"""ESPnet's ``asr_inference`` with the espnet_prune encoders registered.

Accepts exactly the arguments of ``python -m espnet2.bin.asr_inference``::

    python -m espnet_prune.bin.asr_inference --asr_train_config exp/x/config.yaml \
        --asr_model_file exp/x/model.pth --data_path_and_name_and_type dump/test/wav.scp,speech,sound \
        --output_dir exp/x/decode_test
"""

from typing import List, Optional

import espnet_prune


def main(cmd: Optional[List[str]] = None) -> None:
    espnet_prune.register()
    from espnet2.bin import asr_inference

    asr_inference.main(cmd)


if __name__ == "__main__":
    main()
