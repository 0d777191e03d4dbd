"""Shared fixtures: tiny Conformer configs and ESPnet ASR models built from them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import tempfile

import pytest
import torch
import yaml

from espnet_prune.offline import ensure_nltk_stub

# Before ESPnet is imported: no nltk download attempts (and their noise) offline.
os.environ.setdefault(
    "NLTK_DATA", str(ensure_nltk_stub(Path(tempfile.gettempdir()) / "espnet_prune_nltk_stub"))
)

#: Small Conformer close in shape to the LibriSpeech one (macaron, conv, latest rel-pos).
TINY_CONF: Dict[str, Any] = dict(
    output_size=32,
    attention_heads=4,
    linear_units=48,
    num_blocks=3,
    dropout_rate=0.0,
    positional_dropout_rate=0.0,
    attention_dropout_rate=0.0,
    input_layer="conv2d",
    macaron_style=True,
    rel_pos_type="latest",
    pos_enc_layer_type="rel_pos",
    selfattention_layer_type="rel_selfattn",
    use_cnn_module=True,
    cnn_module_kernel=7,
)

#: Variants the encoder must handle like ESPnet does.
CONF_VARIANTS = {
    "latest_rel_macaron": {},
    "legacy_rel": dict(rel_pos_type="legacy"),
    "abs_pos_no_macaron": dict(
        pos_enc_layer_type="abs_pos", selfattention_layer_type="selfattn", macaron_style=False,
        use_flash_attn=False,
    ),
    "no_cnn_conv2d6": dict(use_cnn_module=False, input_layer="conv2d6"),
    "linear_input": dict(input_layer="linear"),
}


def conf_variant(name: str) -> Dict[str, Any]:
    c = dict(TINY_CONF)
    c.update(CONF_VARIANTS[name])
    return c


def valid_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """(B, T, 1) float mask of valid output frames."""
    return (torch.arange(t)[None, :] < lengths[:, None]).float()[..., None]


def set_random_gates(encoder, seed: int, p_close_module: float = 0.3) -> None:
    """Random log_alpha: some units, modules and whole blocks closed."""
    g = torch.Generator().manual_seed(seed)
    for i, block in enumerate(encoder.encoders):
        kill_block = torch.rand(1, generator=g).item() < 0.15
        for name, gate in block.gates.items():
            la = torch.randn(gate.n, generator=g) * 3.0
            if gate.n == 1:
                la = torch.full((1,), -10.0 if kill_block or torch.rand(1, generator=g).item() < p_close_module else 5.0)
            gate.log_alpha.data.copy_(la)
    if getattr(encoder, "gated_frontend", False):
        for gate in encoder.embed.gates:
            gate.log_alpha.data.copy_(torch.randn(gate.n, generator=g) * 3.0)


def randomize_batchnorm(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


def write_asr_config(
    path: Path,
    encoder: str,
    encoder_conf: Dict[str, Any],
    vocab: Optional[list] = None,
    input_size: Optional[int] = None,
) -> Path:
    """A tiny ESPnet ASR training config with char tokens: raw 16 kHz audio through a
    20-mel frontend, or, with ``input_size``, precomputed features and no frontend."""
    vocab = vocab or ["<blank>", "<unk>", "A", "B", "C", "D", "E", " ", "<sos/eos>"]
    conf = {
        "encoder": encoder,
        "encoder_conf": encoder_conf,
        "decoder": "transformer",
        "decoder_conf": {"attention_heads": 2, "linear_units": 32, "num_blocks": 1,
                         "dropout_rate": 0.0, "positional_dropout_rate": 0.0,
                         "self_attention_dropout_rate": 0.0, "src_attention_dropout_rate": 0.0},
        "frontend_conf": {"n_fft": 512, "hop_length": 160, "n_mels": 20},
        "model_conf": {"ctc_weight": 0.3},
        "normalize": None,
        "token_list": vocab,
        "token_type": "char",
        "bpemodel": None,
        "init": None,
    }
    if input_size is not None:
        conf["input_size"] = input_size
        del conf["frontend_conf"]
    path.write_text(yaml.safe_dump(conf))
    return path


def build_asr(config: Path):
    """Build an ESPnet ASR model (plugin registered) from a tiny config."""
    import espnet_prune
    from espnet2.tasks.asr import ASRTask

    espnet_prune.register()
    args = ASRTask.get_parser().parse_args(["--config", str(config), "--output_dir", "unused"])
    return ASRTask.build_model(args), args


def random_gated_asr(config: Path, seed: int = 0):
    """A gated ESPnet ASR model from ``config`` with random weights, batch-norm statistics
    and gates (some modules closed), in eval mode; returns (model, args)."""
    model, args = build_asr(config)
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        if "log_alpha" not in name:
            p.data.normal_(0, 0.3)
    randomize_batchnorm(model, seed)
    set_random_gates(model.encoder, seed)
    return model.eval(), args


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one torch thread is fastest, and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_conf() -> Dict[str, Any]:
    return dict(TINY_CONF)
