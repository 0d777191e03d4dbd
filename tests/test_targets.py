"""Target kinds: the cost each kind names is the real cost of the shrunk model."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_CONF, build_asr, set_random_gates, write_asr_config
from espnet_prune.bin.profile import count_encoder_macs
from espnet_prune.shrink import shrink_asr_model
from espnet_prune.targets import CostContext, build_selector, model_params, parse_target


@pytest.fixture
def gated_model(tmp_path):
    conf = dict(TINY_CONF)
    model, args = build_asr(write_asr_config(tmp_path / "c.yaml", "gated_conformer", conf, input_size=20))
    return model.eval(), args


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", [0.2, 0.4])
def test_whole_model_params_target_is_the_shrunk_models_numel(gated_model, seed, target):
    model, args = gated_model
    set_random_gates(model.encoder, seed)
    selector = build_selector(model, "params", target).attach()
    assert selector.dense_cost() == model_params(model)
    shrunk, _ = shrink_asr_model(model, args)
    n = sum(p.numel() for p in shrunk.parameters())
    assert n == selector.achieved_cost()
    assert abs(selector.achieved_sparsity() - target) <= selector.error_bound()


@pytest.mark.parametrize("kind", ["encoder_macs", "encoder_params", "macs"])
def test_encoder_and_model_macs_are_what_torch_counts(gated_model, kind):
    model, args = gated_model
    set_random_gates(model.encoder, 4)
    ctx = CostContext(seconds=2.0, frames_per_second=100.0, tokens=7)
    selector = build_selector(model, kind, 0.3, ctx).attach()
    shrunk, _ = shrink_asr_model(model, args)
    enc_macs = count_encoder_macs(shrunk.encoder, 20, ctx.input_frames)
    enc_params = sum(p.numel() for p in shrunk.encoder.parameters())
    if kind == "encoder_macs":
        assert selector.achieved_cost() == enc_macs
    elif kind == "encoder_params":
        assert selector.achieved_cost() == enc_params
    elif kind == "macs":
        from espnet_prune.targets import dense_decoder_macs

        t_enc = shrunk.encoder(torch.zeros(1, ctx.input_frames, 20), torch.tensor([ctx.input_frames]))[0].size(1)
        ctc = t_enc * 32 * shrunk.ctc.ctc_lo.out_features
        assert selector.achieved_cost() == enc_macs + ctc + dense_decoder_macs(shrunk.decoder, t_enc, 7)
    assert abs(selector.achieved_sparsity() - 0.3) <= selector.error_bound()


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
