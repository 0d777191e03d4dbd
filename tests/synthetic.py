"""A tiny synthetic ASR corpus (kaldi ark features + char text) and training helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import kaldiio
import numpy as np
import yaml

TOKENS = ["<blank>", "<unk>", "A", "B", "C", "D", "E", "<sos/eos>"]
FEAT_DIM = 20


def make_corpus(root: Path, n_utts: int = 24, seed: int = 0, n_valid: int = 16) -> Path:
    """Write feats.scp/ark, text, speech_shape and tokens.txt under ``root``, and the
    same files for the first ``n_valid`` utterances under ``root/valid``.

    Each letter is a fixed random 20-dim pattern held for 8-12 frames (+ noise),
    so the mapping from features to text is learnable.
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    patterns = {c: rng.standard_normal(FEAT_DIM) * 2 for c in "ABCDE"}
    texts, shapes = [], []
    with kaldiio.WriteHelper(f"ark,scp:{root}/feats.ark,{root}/feats.scp") as writer:
        for i in range(n_utts):
            utt = f"utt{i:03d}"
            word = "".join(rng.choice(list("ABCDE"), size=rng.integers(3, 7)))
            frames = [
                patterns[c] + 0.3 * rng.standard_normal((rng.integers(8, 13), FEAT_DIM)) for c in word
            ]
            feats = np.concatenate(frames).astype(np.float32)
            writer(utt, feats)
            texts.append(f"{utt} {word}")
            shapes.append(f"{utt} {feats.shape[0]},{FEAT_DIM}")
    (root / "text").write_text("\n".join(texts) + "\n")
    (root / "speech_shape").write_text("\n".join(shapes) + "\n")
    (root / "tokens.txt").write_text("\n".join(TOKENS) + "\n")
    valid = root / "valid"
    valid.mkdir(exist_ok=True)
    scp = (root / "feats.scp").read_text().splitlines()
    for name, lines in (("feats.scp", scp), ("text", texts), ("speech_shape", shapes)):
        (valid / name).write_text("\n".join(lines[:n_valid]) + "\n")
    return root


ENCODER_CONF = dict(
    output_size=32, attention_heads=4, linear_units=64, num_blocks=3,
    dropout_rate=0.0, positional_dropout_rate=0.0, attention_dropout_rate=0.0,
    input_layer="conv2d", macaron_style=True, rel_pos_type="latest",
    pos_enc_layer_type="rel_pos", selfattention_layer_type="rel_selfattn",
    use_cnn_module=True, cnn_module_kernel=5,
)


def base_config(**overrides) -> Dict:
    conf = {
        "encoder": "conformer",
        "encoder_conf": dict(ENCODER_CONF),
        "decoder": "transformer",
        "decoder_conf": {"attention_heads": 2, "linear_units": 32, "num_blocks": 1,
                         "dropout_rate": 0.0, "positional_dropout_rate": 0.0,
                         "self_attention_dropout_rate": 0.0, "src_attention_dropout_rate": 0.0},
        "model_conf": {"ctc_weight": 0.3, "lsm_weight": 0.0},
        "optim": "adam",
        "optim_conf": {"lr": 0.003},
        "batch_type": "sorted",
        "batch_size": 8,
        "max_epoch": 1,
        "num_att_plot": 0,
        "init": None,
        "seed": 0,
        "best_model_criterion": [["valid", "loss", "min"]],
    }
    conf.update(overrides)
    return conf


def write_yaml(path: Path, conf: Dict) -> Path:
    path.write_text(yaml.safe_dump(conf, sort_keys=False))
    return path


def train_cmd(config: Path, output_dir: Path, data: Path, extra: Optional[List[str]] = None) -> List[str]:
    return [
        sys.executable, "-m", "espnet_prune.bin.asr_train",
        "--config", str(config), "--output_dir", str(output_dir), "--ngpu", "0",
        "--num_workers", "0", "--use_tensorboard", "false", "--use_matplotlib", "false",
        "--token_list", str(data / "tokens.txt"), "--token_type", "char", "--input_size", str(FEAT_DIM),
        "--train_data_path_and_name_and_type", f"{data}/feats.scp,speech,kaldi_ark",
        "--train_data_path_and_name_and_type", f"{data}/text,text,text",
        "--valid_data_path_and_name_and_type", f"{data}/valid/feats.scp,speech,kaldi_ark",
        "--valid_data_path_and_name_and_type", f"{data}/valid/text,text,text",
        "--train_shape_file", str(data / "speech_shape"), "--valid_shape_file", str(data / "valid/speech_shape"),
        *(extra or []),
    ]


#: one thread in every training process: runs are reproducible, and two of them can share
#: a 2-core machine
PINNED_THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class Job:
    """A training command running in the background (:func:`start`)."""

    cmd: List[str]
    log: Path
    proc: subprocess.Popen


def start(cmd: List[str], log: Path) -> Job:
    """Start a training command with one thread, its output in ``log``."""
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, **PINNED_THREADS))
    return Job(cmd, log, proc)


def wait(job: Job) -> None:
    """Wait for a job; raise with the log tail on failure."""
    if job.proc.wait() != 0:
        tail = "\n".join(job.log.read_text().splitlines()[-40:])
        raise RuntimeError(f"command failed ({job.proc.returncode}): {' '.join(job.cmd)}\n{tail}")


def run(cmd: List[str], log: Path) -> None:
    """Run a training command with one thread; raise with the log tail on failure."""
    wait(start(cmd, log))
