"""Decoding with ESPnet's inference code through the plugin wrapper."""

import numpy as np
import soundfile

from conftest import conf_variant, random_gated_asr, write_asr_config
from espnet_prune.bin import asr_inference
from espnet_prune.model_io import save_asr_model
from espnet_prune.shrink import shrink_asr_model


def _decode(model_dir, wav_scp, out_dir):
    asr_inference.main([
        "--asr_train_config", str(model_dir / "config.yaml"),
        "--asr_model_file", str(model_dir / "model.pth"),
        "--data_path_and_name_and_type", f"{wav_scp},speech,sound",
        "--output_dir", str(out_dir),
        "--batch_size", "1", "--beam_size", "3", "--ctc_weight", "0.3",
        "--maxlenratio", "0.0", "--ngpu", "0",
    ])
    lines = (out_dir / "1best_recog/text").read_text().splitlines()
    return dict(line.split(maxsplit=1) if " " in line else (line, "") for line in lines)


def test_gated_and_shrunk_models_decode_identically(tmp_path):
    config = write_asr_config(tmp_path / "gated.yaml", "gated_conformer", conf_variant("latest_rel_macaron"))
    model, args = random_gated_asr(config)
    shrunk, shrunk_args = shrink_asr_model(model, args)
    save_asr_model(tmp_path / "gated", model, args)
    save_asr_model(tmp_path / "shrunk", shrunk, shrunk_args)

    rng = np.random.default_rng(0)
    scp = []
    for i in range(3):
        wav = tmp_path / f"utt{i}.wav"
        t = np.arange(int(16000 * (0.6 + 0.2 * i))) / 16000
        audio = 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t) + 0.05 * rng.standard_normal(t.size)
        soundfile.write(wav, audio.astype(np.float32), 16000, subtype="PCM_16")
        scp.append(f"utt{i} {wav}")
    (tmp_path / "wav.scp").write_text("\n".join(scp) + "\n")

    hyp_gated = _decode(tmp_path / "gated", tmp_path / "wav.scp", tmp_path / "dec_gated")
    hyp_shrunk = _decode(tmp_path / "shrunk", tmp_path / "wav.scp", tmp_path / "dec_shrunk")
    assert sorted(hyp_gated) == ["utt0", "utt1", "utt2"]
    assert hyp_gated == hyp_shrunk
    assert any(hyp_gated.values())  # random weights still emit tokens
