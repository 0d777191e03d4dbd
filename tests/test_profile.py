"""Profiling the LibriSpeech-100 Conformer config."""

import json
from pathlib import Path

from espnet_prune.bin import profile

CONF = Path(__file__).parents[1] / "conf/train_asr_conformer.yaml"


def test_librispeech100_profile_matches_espnet(capsys):
    from espnet2.tasks.asr import ASRTask

    result = profile.main(["--asr_train_config", str(CONF), "--seconds", "10"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(result))
    # independent reference: ESPnet builds the same config with a 5000-token list
    args = ASRTask.get_parser().parse_args(["--config", str(CONF), "--output_dir", "x"])
    args.token_list = [f"t{i}" for i in range(5000)]
    model = ASRTask.build_model(args)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert result["params"]["total"] == count(model)
    assert result["params"]["encoder"] == count(model.encoder)
    assert result["params"]["decoder"] == count(model.decoder)
    assert result["params"]["prunable"] == sum(count(b) for b in model.encoder.encoders)
    assert result["encoder_macs"] == result["macs_counted"]
    assert result["frames_per_second"] == 100.0
    assert len(result["block_structures"]) == 12
