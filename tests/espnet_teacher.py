"""A teacher trained by ESPnet's own tools, not by our recipe: raw audio, ESPnet's ``default``
frontend, global MVN stats from ``--collect_stats``, its own sentencepiece model and token list.

Follows what ESPnet's ``asr.sh`` does (stages 5, 10, 11): sentencepiece training +
``espnet2.bin.tokenize_text --write_vocabulary``, ``asr_train --collect_stats``, then
``asr_train`` with ``--normalize global_mvn`` (passed on the command line: a
``normalize: global_mvn`` in the YAML breaks ``--collect_stats``)::

    python tests/espnet_teacher.py --data_dir DATA --out_dir WORK [--epochs 3] [--size tiny|mini]

``DATA/{train,dev}/{wav.scp,text}``; writes ``WORK/{token_list,stats,asr}``, the model
in ``WORK/asr/config.yaml`` + ``WORK/asr/valid.acc.ave.pth`` (or ``latest.pth``).
Paths in ``config.yaml`` are relative to ``WORK`` (the commands run there), as in an
ESPnet recipe dir.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

SIZES: Dict[str, Dict[str, Any]] = {
    "tiny": dict(
        encoder_conf=dict(output_size=32, attention_heads=4, linear_units=64, num_blocks=2,
                          dropout_rate=0.0, positional_dropout_rate=0.0, attention_dropout_rate=0.0,
                          input_layer="conv2d6", normalize_before=True, macaron_style=True,
                          rel_pos_type="latest", pos_enc_layer_type="rel_pos",
                          selfattention_layer_type="rel_selfattn", activation_type="swish",
                          use_cnn_module=True, cnn_module_kernel=7),
        decoder_conf=dict(attention_heads=2, linear_units=64, num_blocks=1, dropout_rate=0.0,
                          positional_dropout_rate=0.0, self_attention_dropout_rate=0.0,
                          src_attention_dropout_rate=0.0),
        frontend_conf=dict(n_fft=512, hop_length=160, n_mels=40),
        batch_size=8, lr=0.005, warmup=20, vocab=30,
    ),
    # conf/mini's baseline architecture on raw audio
    "mini": dict(
        encoder_conf=dict(output_size=144, attention_heads=4, linear_units=576, num_blocks=4,
                          dropout_rate=0.0, positional_dropout_rate=0.0, attention_dropout_rate=0.0,
                          input_layer="conv2d6", normalize_before=True, macaron_style=True,
                          rel_pos_type="latest", pos_enc_layer_type="rel_pos",
                          selfattention_layer_type="rel_selfattn", activation_type="swish",
                          use_cnn_module=True, cnn_module_kernel=15),
        decoder_conf=dict(attention_heads=4, linear_units=576, num_blocks=2, dropout_rate=0.0,
                          positional_dropout_rate=0.0, self_attention_dropout_rate=0.0,
                          src_attention_dropout_rate=0.0),
        frontend_conf=dict(n_fft=512, hop_length=160, n_mels=80),
        batch_size=32, lr=0.005, warmup=150, vocab=100,
    ),
}


def _run(cmd: List[str], cwd: Path, log: Path) -> None:
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")


def train_config(size: str, epochs: int) -> Dict[str, Any]:
    s = SIZES[size]
    return {
        "frontend": "default",
        "frontend_conf": dict(s["frontend_conf"]),
        "encoder": "conformer", "encoder_conf": dict(s["encoder_conf"]),
        "decoder": "transformer", "decoder_conf": dict(s["decoder_conf"]),
        "model_conf": {"ctc_weight": 0.3, "lsm_weight": 0.1, "length_normalized_loss": False},
        "seed": 0, "num_workers": 0, "batch_type": "sorted", "batch_size": s["batch_size"],
        "max_epoch": epochs, "init": None, "num_att_plot": 0,
        "best_model_criterion": [["valid", "acc", "max"]], "keep_nbest_models": 2,
        "optim": "adam", "optim_conf": {"lr": s["lr"]},
        "scheduler": "warmuplr", "scheduler_conf": {"warmup_steps": s["warmup"]},
    }


def train_teacher(data: Path, work: Path, epochs: int = 3, size: str = "tiny",
                  vocab: Optional[int] = None, python: str = sys.executable) -> Dict[str, Path]:
    """Train the teacher; returns ``config`` / ``model`` / ``stats`` / ``bpemodel`` paths."""
    data, work = Path(data).resolve(), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    vocab = vocab or SIZES[size]["vocab"]
    tok = work / "token_list"
    tok.mkdir(exist_ok=True)
    (tok / "train.txt").write_text("".join(
        l.split(maxsplit=1)[1] + "\n" for l in (data / "train/text").read_text().splitlines()))
    import sentencepiece as spm  # what ESPnet's spm_train wraps (asr.sh stage 5)

    spm.SentencePieceTrainer.train(
        input=str(tok / "train.txt"), model_prefix=str(tok / "bpe"), vocab_size=vocab,
        model_type="unigram", character_coverage=1.0, input_sentence_size=100000000,
        hard_vocab_limit=False, minloglevel=2)
    _run([python, "-m", "espnet2.bin.tokenize_text", "--token_type", "bpe", "--input",
          str(data / "train/text"), "--output", "token_list/tokens.txt", "--bpemodel", "token_list/bpe.model",
          "--field", "2-", "--write_vocabulary", "true", "--add_symbol", "<blank>:0",
          "--add_symbol", "<unk>:1", "--add_symbol", "<sos/eos>:-1"], work, work / "tokenize.log")
    conf_path = work / "train_asr.yaml"
    conf_path.write_text(yaml.safe_dump(train_config(size, epochs), sort_keys=False))
    for s in ("train", "dev"):  # key files for --collect_stats (asr.sh: the wav.scp itself)
        (work / f"{s}.keys").write_text((data / s / "wav.scp").read_text())
    common = ["--config", "train_asr.yaml", "--ngpu", "0", "--use_tensorboard", "false",
              "--use_matplotlib", "false", "--token_list", "token_list/tokens.txt",
              "--token_type", "bpe", "--bpemodel", "token_list/bpe.model",
              "--train_data_path_and_name_and_type", f"{data}/train/wav.scp,speech,sound",
              "--train_data_path_and_name_and_type", f"{data}/train/text,text,text",
              "--valid_data_path_and_name_and_type", f"{data}/dev/wav.scp,speech,sound",
              "--valid_data_path_and_name_and_type", f"{data}/dev/text,text,text"]
    _run([python, "-m", "espnet2.bin.asr_train", "--collect_stats", "true", "--output_dir", "stats",
          "--train_shape_file", "train.keys", "--valid_shape_file", "dev.keys", *common],
         work, work / "collect_stats.log")
    for s in ("train", "valid"):
        (work / f"stats/{s}/text_shape.bpe").write_text((work / f"stats/{s}/text_shape").read_text())
    _run([python, "-m", "espnet2.bin.asr_train", "--output_dir", "asr", "--resume", "true",
          "--normalize", "global_mvn", "--normalize_conf", "stats_file=stats/train/feats_stats.npz",
          "--train_shape_file", "stats/train/speech_shape", "--train_shape_file", "stats/train/text_shape.bpe",
          "--valid_shape_file", "stats/valid/speech_shape", "--valid_shape_file", "stats/valid/text_shape.bpe",
          *common], work, work / "asr_train.log")
    model = work / "asr/valid.acc.ave.pth"
    return {"config": work / "asr/config.yaml", "model": model if model.is_file() else work / "asr/latest.pth",
            "stats": work / "stats/train/feats_stats.npz", "bpemodel": work / "token_list/bpe.model"}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", type=Path, required=True)
    p.add_argument("--out_dir", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--size", default="tiny", choices=sorted(SIZES))
    p.add_argument("--vocab", type=int, default=None)
    a = p.parse_args()
    print(train_teacher(a.data_dir, a.out_dir, a.epochs, a.size, a.vocab))
