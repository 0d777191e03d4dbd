"""Target kinds: the cost each kind names is the real cost of the shrunk model.

The sparsity a target reaches is held to the exact-target rule's guarantee (half the
largest single unit over the dense cost), recomputed here from the dense ESPnet
model's own modules: parameter shapes, or torch's FLOP counter for MACs.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Tuple

import pytest
import torch
from espnet.nets.pytorch_backend.conformer.encoder_layer import EncoderLayer
from espnet.nets.pytorch_backend.transformer.decoder_layer import DecoderLayer
from torch.utils.flop_counter import FlopCounterMode

from conftest import TINY_CONF, build_asr, set_random_gates, write_asr_config
from espnet_prune.bin.profile import count_encoder_macs
from espnet_prune.shrink import shrink_asr_model
from espnet_prune.target_kinds import parse_target
from espnet_prune.targets import CostContext, TargetSelector, build_selector, model_params

#: (module, its pre-LayerNorm) of the prunable sublayers of ESPnet's encoder / decoder layers.
_SUBLAYERS = {
    EncoderLayer: [("self_attn", "norm_mha"), ("feed_forward", "norm_ff"),
                   ("feed_forward_macaron", "norm_ff_macaron"), ("conv_module", "norm_conv")],
    DecoderLayer: [("self_attn", "norm1"), ("src_attn", "norm2"), ("feed_forward", "norm3")],
}
#: The output projection of each sublayer kind: its bias is paid once per sublayer.
_CLOSING = {"self_attn": "linear_out", "src_attn": "linear_out", "feed_forward": "w_2",
            "feed_forward_macaron": "w_2", "conv_module": "pointwise_conv2"}

Unit = Tuple[int, List[torch.nn.Module], List[torch.Tensor], List[torch.Tensor]]


def prunable_units(root: torch.nn.Module) -> Iterator[Unit]:
    """Every kind of prunable unit under a dense ESPnet ``root``, as (number of units,
    modules whose MACs the units split evenly, parameters they split evenly, parameters
    paid once by the first kept unit): heads, FFN units and conv channels of every
    sublayer (its closing bias and pre-norm paid once), and the output channels of every
    Conv2d of a ``Conv2dSubsampling*`` front end (with the next layer's weights they feed)."""
    for module in root.modules():
        for cls, sublayers in _SUBLAYERS.items():
            if not isinstance(module, cls):
                continue
            for name, norm in sublayers:
                sub = getattr(module, name, None)
                if sub is None:
                    continue
                n = sub.h if name.endswith("attn") else (
                    sub.depthwise_conv.out_channels if name == "conv_module" else sub.w_1.out_features)
                bias = getattr(sub, _CLOSING[name]).bias
                shared = [p for p in sub.parameters() if p is not bias]
                yield n, [sub], shared, [bias, *getattr(module, norm).parameters()]
        if type(module).__name__.startswith("Conv2dSubsampling"):
            convs = [m for m in module.conv if isinstance(m, torch.nn.Conv2d)]
            for conv, feeds in zip(convs, convs[1:] + [module.out[0]]):
                yield conv.out_channels, [conv, feeds], [conv.weight, conv.bias, feeds.weight], []


def _per_unit(total: int, n: int) -> int:
    """``total / n``, which must be exact."""
    assert total % n == 0, (total, n)  # every unit of a module is the same size
    return total // n


def largest_unit_params(root: torch.nn.Module) -> int:
    """Params of the largest single unit under ``root``, its module's fixed part included."""
    return max(_per_unit(sum(p.numel() for p in shared), n) + sum(p.numel() for p in fixed)
               for n, _, shared, fixed in prunable_units(root))


def module_macs(encoder: torch.nn.Module, input_size: int, frames: int) -> Dict[torch.nn.Module, int]:
    """MACs of every submodule of one ``encoder`` forward, counted by torch."""
    encoder.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoder(torch.randn(1, frames, input_size), torch.tensor([frames]))
    flops = counter.get_flop_counts()
    root = type(encoder).__name__
    return {m: sum(flops.get(f"{root}.{name}", {}).values()) // 2 for name, m in encoder.named_modules()}


def largest_unit_macs(encoder: torch.nn.Module, input_size: int, frames: int) -> int:
    """MACs of the largest single unit of a dense ``encoder`` at ``frames`` input frames."""
    macs = module_macs(encoder, input_size, frames)
    return max(_per_unit(sum(macs[m] for m in modules), n) for n, modules, _, _ in prunable_units(encoder))


def assert_within_guarantee(selector: TargetSelector, achieved: int, dense: int, target: float,
                            largest_unit: int) -> None:
    """The exact-target rule's guarantee, ``|achieved - budget| <= c_max / 2`` with ``c_max``
    the largest single unit, in cost units (integers: the slack only absorbs the rounding
    of ``(1 - target) * dense``); ``selector.error_bound()`` is that bound in sparsity."""
    assert selector.error_bound() == pytest.approx(largest_unit / (2 * dense), rel=1e-12)
    assert abs(achieved - (1.0 - target) * dense) <= largest_unit / 2 + 1e-6, (achieved, dense, target)


@pytest.fixture
def gated_model(tmp_path):
    conf = dict(TINY_CONF)
    model, args = build_asr(write_asr_config(tmp_path / "c.yaml", "gated_conformer", conf, input_size=20))
    return model.eval(), args


@pytest.fixture(scope="module")
def dense_model(tmp_path_factory):
    """ESPnet's own dense model of the same configuration (reference costs)."""
    path = tmp_path_factory.mktemp("dense") / "c.yaml"
    return build_asr(write_asr_config(path, "conformer", dict(TINY_CONF), input_size=20))[0].eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", [0.2, 0.4])
def test_whole_model_params_target_is_the_shrunk_models_numel(gated_model, dense_model, seed, target):
    model, args = gated_model
    set_random_gates(model.encoder, seed)
    selector = build_selector(model, "params", target).attach()
    dense = sum(p.numel() for p in dense_model.parameters())
    assert selector.dense_cost() == model_params(model) == dense
    shrunk, _ = shrink_asr_model(model, args)
    n = sum(p.numel() for p in shrunk.parameters())
    assert n == selector.achieved_cost()
    assert_within_guarantee(selector, n, dense, target, largest_unit_params(dense_model.encoder))  # decoder: no gates


@pytest.mark.parametrize("kind", ["encoder_macs", "encoder_params", "macs"])
def test_encoder_and_model_macs_are_what_torch_counts(gated_model, dense_model, kind):
    model, args = gated_model
    set_random_gates(model.encoder, 4)
    ctx = CostContext(seconds=2.0, frames_per_second=100.0, tokens=7)
    selector = build_selector(model, kind, 0.3, ctx).attach()
    shrunk, _ = shrink_asr_model(model, args)
    enc_macs = count_encoder_macs(shrunk.encoder, 20, ctx.input_frames)
    enc_params = sum(p.numel() for p in shrunk.encoder.parameters())
    dense_enc_macs = count_encoder_macs(dense_model.encoder, 20, ctx.input_frames)
    if kind == "encoder_macs":
        achieved, dense = enc_macs, dense_enc_macs
    elif kind == "encoder_params":
        achieved, dense = enc_params, sum(p.numel() for p in dense_model.encoder.parameters())
    elif kind == "macs":
        from espnet_prune.targets import dense_decoder_macs

        t_enc = shrunk.encoder(torch.zeros(1, ctx.input_frames, 20), torch.tensor([ctx.input_frames]))[0].size(1)
        ctc = t_enc * 32 * shrunk.ctc.ctc_lo.out_features
        decoder = dense_decoder_macs(shrunk.decoder, t_enc, 7)  # not gated: the same in the dense model
        achieved, dense = enc_macs + ctc + decoder, dense_enc_macs + ctc + decoder
    assert selector.achieved_cost() == achieved
    assert selector.dense_cost() == dense
    largest = (largest_unit_params(dense_model.encoder) if kind == "encoder_params"
               else largest_unit_macs(dense_model.encoder, 20, ctx.input_frames))
    assert_within_guarantee(selector, achieved, dense, 0.3, largest)


def test_unreachable_target_is_named(gated_model):
    model, _ = gated_model
    with pytest.raises(ValueError, match=r"block_macs covers the blocks only.*front end"):
        build_selector(model, "block_macs", 0.3)
    with pytest.raises(ValueError, match=r"model_conf.target.params=0.95 cannot be reached"):
        build_selector(model, "params", 0.95)


def test_parse_target_names_the_key():
    assert parse_target({"encoder_macs": "0.25"}) == ("encoder_macs", 0.25)
    with pytest.raises(ValueError, match="target.flops"):
        parse_target({"flops": 0.5})
    with pytest.raises(ValueError, match=r"target.params=1.0 must be in \[0, 1\)"):
        parse_target({"params": 1.0})


def test_selection_is_cached_until_a_gate_changes(gated_model):
    model, _ = gated_model
    selector = build_selector(model, "params", 0.3).attach()
    first = selector.selection()
    assert selector.selection() is first
    with torch.no_grad():
        model.encoder.encoders[0].gates["heads"].log_alpha.add_(1.0)
    assert selector.selection() is not first
    with torch.no_grad():  # a write through .data keeps the version counter: seen anyway
        model.encoder.encoders[1].gates["heads"].log_alpha.data.add_(1.0)
    second = selector.selection()
    model.encoder.encoders[1].gates["heads"].log_alpha.data.add_(1.0)
    assert selector.selection() is not second


def test_pruned_front_end_sparsity_is_measured_against_the_dense_front_end(gated_model):
    """Reports compare a pruned encoder with the dense one, front end included."""
    from espnet_prune.cost import structure_cost

    model, args = gated_model
    set_random_gates(model.encoder, 5)
    build_selector(model, "encoder_macs", 0.5).attach()
    shrunk, _ = shrink_asr_model(model, args)
    dims = shrunk.encoder.dims
    assert dims.subsampling_channels is not None and dims.subsampling_channels != (32, 32)
    dense = structure_cost(dims.dense_dims(), dims.dense_structure())["macs"]
    assert dense == structure_cost(model.encoder.dims, model.encoder.dims.dense_structure())["macs"]
    assert dense == count_encoder_macs(build_asr_dense(args), 20, 1000)


def build_asr_dense(args):
    """The dense encoder of the same configuration (ESPnet's ConformerEncoder)."""
    from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

    conf = {k: v for k, v in args.encoder_conf.items() if k not in ("gate_granularities", "gate_conf")}
    return ConformerEncoder(20, **conf)


def test_target_kinds_are_the_cost_vocabulary():
    """Every target names one metric and one scope of the cost package, and every pair has a
    kind; a priced metric (``decode``) covers the whole model."""
    from espnet_prune.cost import METRICS, PRICED_METRICS, SCOPES
    from espnet_prune.target_kinds import TARGET_KINDS

    assert sorted(TARGET_KINDS.values()) == sorted(
        [(m, s) for m in METRICS for s in SCOPES] + [(m, "model") for m in PRICED_METRICS])
