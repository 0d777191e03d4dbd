"""Shared fixtures: tiny Conformer configs and ESPnet ASR models built from them."""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import torch
import yaml

from espnet_prune import typeguard_cache
from espnet_prune.offline import ensure_nltk_stub

# Before ESPnet is imported: no nltk download attempts (and their noise) offline.
os.environ.setdefault(
    "NLTK_DATA", str(ensure_nltk_stub(Path(tempfile.gettempdir()) / "espnet_prune_nltk_stub"))
)
# typeguard's instrumented functions: one cache for this session and the processes it starts,
# empty at the start (a run times the same whatever ran before), removed at the end
if typeguard_cache.ENV not in os.environ:
    os.environ[typeguard_cache.ENV] = tempfile.mkdtemp(prefix="espnet_prune_typeguard_")
    atexit.register(shutil.rmtree, os.environ[typeguard_cache.ENV], True)

#: The slowest test files, slowest first (seconds of one pytest-xdist worker on 2 cores,
#: ``--durations``): run before the rest so that the two workers of ``make test`` finish
#: together instead of one waiting for the other's last long file.
SLOW_FIRST = ("test_recipe.py",  # 200: the whole recipe run, then a family run on a copy
              "test_teacher_recipe.py",  # 80: an ESPnet-trained teacher pruned by run.sh
              "test_prune_training.py",  # 50: a teacher and four pruning runs
              "test_ddp.py")  # 31: a teacher and two 2-rank DDP launches; the rest: 23 or less


def pytest_collection_modifyitems(session, config, items) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


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


# =============================================================================
# Decoders: random gates, ESPnet's beam searches, zeroed ESPnet references
# =============================================================================


def set_random_decoder_gates(dec, seed: int, p_close: float = 0.3, p_kill_layer: float = 0.25) -> None:
    """Random log_alpha of a GatedTransformerDecoder: units spread out, some sublayers and
    some whole layers closed."""
    from espnet_prune.structure import SUBLAYERS

    g = torch.Generator().manual_seed(seed)
    for layer in dec.decoders:
        kill = torch.rand(1, generator=g).item() < p_kill_layer
        for name, gate in layer.gates.items():
            if gate.n == 1:
                closed = kill or torch.rand(1, generator=g).item() < p_close
                la = torch.full((1,), -10.0 if closed else 5.0)
            else:
                la = torch.randn(gate.n, generator=g) * 3.0
                sublayer = next(s for s, f in SUBLAYERS.items() if f[0] == name)
                if kill and sublayer not in layer.gates:
                    la = torch.full((gate.n,), -10.0)
            gate.log_alpha.data.copy_(la)


def espnet_beam(cls, dec, beam: int, vocab: int, ctc=None):
    """ESPnet search ``cls`` (eval mode) scoring with ``dec`` and a length bonus, plus CTC
    prefix scores (weight 0.3, full pre-beam) when ``ctc`` is given; sos = eos = vocab - 1."""
    from espnet.nets.scorers.ctc import CTCPrefixScorer
    from espnet.nets.scorers.length_bonus import LengthBonus

    eos = vocab - 1
    scorers: Dict[str, Any] = dict(decoder=dec, length_bonus=LengthBonus(vocab))
    weights = dict(decoder=1.0, length_bonus=0.1)
    if ctc is not None:
        scorers["ctc"] = CTCPrefixScorer(ctc, eos)
        weights = dict(decoder=0.7, ctc=0.3, length_bonus=0.1)
    return cls(beam_size=beam, weights=weights, scorers=scorers, sos=eos, eos=eos, vocab_size=vocab,
               token_list=[f"t{i}" for i in range(vocab)],
               pre_beam_score_key=None if ctc is None else "full").eval()


def assert_same_hyps(ref_hyps, hyps, tol: float) -> None:
    """Same number of hypotheses, same token sequences, total and per-scorer scores within
    ``tol``."""
    assert len(ref_hyps) == len(hyps) > 0
    for h1, h2 in zip(ref_hyps, hyps):
        assert h1.yseq.tolist() == h2.yseq.tolist()
        assert abs(float(h1.score) - float(h2.score)) <= tol
        assert h1.scores.keys() == h2.scores.keys()
        for k in h1.scores:
            assert abs(float(h1.scores[k]) - float(h2.scores[k])) <= tol, k


def randomize_decoder(dec: torch.nn.Module, seed: int, std: float = 0.5) -> torch.nn.Module:
    """Large random weights (peaky scores: no near-ties in a beam), norm scales near 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in dec.named_parameters():
            if "log_alpha" in name:
                continue
            mean = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.2 if mean else std) + mean)
    return dec


class ZeroSublayer(torch.nn.Module):
    """Stands in for a removed decoder sublayer in a reference: contributes nothing."""

    def __init__(self, out_dim: Optional[int] = None):
        super().__init__()
        self.out_dim = out_dim

    def forward(self, x, *args, **kwargs):
        return torch.zeros_like(x if self.out_dim is None else x[..., : self.out_dim])


#: sublayer -> (attribute, norm, concat linear) of ESPnet's DecoderLayer
DECODER_SUBLAYERS = (("self_attn", "self_attn", "norm1", "concat_linear1"),
                     ("src_attn", "src_attn", "norm2", "concat_linear2"),
                     ("ffn", "feed_forward", "norm3", None))


def decoder_plan(dense, sizes: List[Dict[str, int]], seed: int) -> List[Dict[str, torch.Tensor]]:
    """Random kept indices (sorted) per layer and sublayer of the ESPnet decoder ``dense``
    with ``sizes`` ``[{self_heads, src_heads, ffn_units}]`` kept."""
    g = torch.Generator().manual_seed(seed)
    plan = []
    for layer, size in zip(dense.decoders, sizes):
        dense_n = {"self_attn": layer.self_attn.h, "src_attn": layer.src_attn.h,
                   "ffn": layer.feed_forward.w_1.out_features}
        field = {"self_attn": "self_heads", "src_attn": "src_heads", "ffn": "ffn_units"}
        plan.append({name: torch.randperm(n, generator=g)[: size[field[name]]].sort().values
                     for name, n in dense_n.items()})
    return plan


def zeroed_decoder_reference(dense, plan: List[Dict[str, torch.Tensor]]):
    """Copy of the ESPnet decoder ``dense`` computing the pruned structure ``plan``: removed
    heads / units zeroed in ``linear_out`` / ``w_2``, removed sublayers (and their norms)
    skipped."""
    ref = copy.deepcopy(dense)
    for layer, keep_of in zip(ref.decoders, plan):
        for name, attr, norm, concat in DECODER_SUBLAYERS:
            keep = keep_of[name]
            if len(keep) == 0:
                setattr(layer, attr, ZeroSublayer())
                setattr(layer, norm, torch.nn.Identity())
                if layer.concat_after and concat is not None:
                    setattr(layer, concat, ZeroSublayer(layer.size))
                continue
            module = getattr(layer, attr)
            with torch.no_grad():
                if name == "ffn":
                    drop = torch.ones(module.w_1.out_features, dtype=torch.bool)
                    drop[keep] = False
                    module.w_2.weight[:, drop] = 0
                else:
                    drop = torch.ones(module.h, dtype=torch.bool)
                    drop[keep] = False
                    module.linear_out.weight[:, drop.repeat_interleave(module.d_k)] = 0
    return ref


def sliced_grads(dense_grads: Dict[str, torch.Tensor], plan, kept_layers: List[int],
                 d_k: int) -> Dict[str, torch.Tensor]:
    """Gradients of a pruned decoder's parameters read off the zeroed reference's: rows /
    columns of the kept heads (``d_k`` each) and units, layer ``j`` of the pruned decoder
    being dense layer ``kept_layers[j]``."""
    out = {}
    for name, grad in dense_grads.items():
        if not name.startswith("decoders."):
            out[name] = grad
            continue
        _, i, rest = name.split(".", 2)
        if int(i) not in kept_layers:
            continue
        keep = plan[int(i)]
        sub = rest.split(".")[0]
        if sub in ("self_attn", "src_attn"):
            idx = (keep[sub][:, None] * d_k + torch.arange(d_k)).flatten()
            if rest.split(".")[1] in ("linear_q", "linear_k", "linear_v"):
                grad = grad[idx]
            elif rest.endswith("linear_out.weight"):
                grad = grad[:, idx]
        elif sub == "feed_forward":
            if rest.startswith("feed_forward.w_1"):
                grad = grad[keep["ffn"]]
            elif rest == "feed_forward.w_2.weight":
                grad = grad[:, keep["ffn"]]
        out[f"decoders.{kept_layers.index(int(i))}.{rest}"] = grad
    return out
