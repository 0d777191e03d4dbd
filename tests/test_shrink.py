"""Shrinker: gated (eval) and shrunk models compute the same function."""

import json

import pytest
import torch

from conftest import (
    CONF_VARIANTS,
    build_asr,
    conf_variant,
    randomize_batchnorm,
    set_random_gates,
    valid_mask,
    write_asr_config,
)
from espnet_prune.cost import structure_cost
from espnet_prune.encoder import GatedConformerEncoder
from espnet_prune.pruned_encoder import PrunedConformerEncoder
from espnet_prune.parts import GatedPart, gated_parts
from espnet_prune.shrink import shrink_asr_model
from espnet_prune.structure import BlockStructure


def _random_model_weights(module, seed):
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if "log_alpha" not in name:
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("variant", sorted(CONF_VARIANTS))
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", [None, "encoder_params"])
def test_shrunk_encoder_equals_gated_eval(variant, seed, target):
    conf = conf_variant(variant)
    conf["num_blocks"] = 4
    gated = GatedConformerEncoder(20, **conf)
    _random_model_weights(gated, seed)
    randomize_batchnorm(gated, seed)
    set_random_gates(gated, seed)
    if target is not None:  # the front end is pruned too (encoder scope)
        gated.set_eval_target(target, 0.4)
    gated.eval()
    assert isinstance(gated, GatedPart)
    pruned, pconf = gated.shrink()
    assert pconf == {**{k: v for k, v in conf.items() if k not in ('gate_granularities', 'gate_conf')},
                     **{k: pconf[k] for k in pconf if k not in conf}}
    assert isinstance(pruned, PrunedConformerEncoder)
    assert pruned.structure() == gated.structure()
    x = torch.randn(3, 70, 20, generator=torch.Generator().manual_seed(seed))
    lengths = torch.tensor([70, 52, 25])
    y_gated, olens, _ = gated(x, lengths)
    y_pruned, olens_p, _ = pruned(x, lengths)
    assert torch.equal(olens, olens_p)
    diff = ((y_gated - y_pruned) * valid_mask(olens, y_gated.size(1))).abs().max().item()
    assert diff <= 1e-4
    # the gates really removed something, and the shrunk size is what the cost model says
    n = sum(p.numel() for p in pruned.parameters())
    assert n == structure_cost(pruned.dims, pruned.structure())["params"]
    if target is None:
        assert n == structure_cost(gated.dims, gated.structure())["params"]
    else:
        assert n == gated.eval_selector.achieved_cost()
        if gated.gated_frontend:
            assert "subsampling_channels" in pconf
    assert n < sum(p.numel() for p in gated.parameters()) - sum(
        p.numel() for p in gated.gate_parameters()
    )
    # the config written for the shrunk encoder rebuilds the same shapes
    rebuilt = PrunedConformerEncoder(20, **pconf)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in pruned.state_dict().items()
    }


def test_block_with_every_module_removed(tiny_conf):
    structure = [BlockStructure(0, 0, 0, 0), BlockStructure(2, 5, 0, 3), BlockStructure(0, 0, 7, 0)]
    enc = PrunedConformerEncoder(20, block_structures=[s.to_dict() for s in structure], **tiny_conf).eval()
    block = enc.encoders[0]
    assert sorted(n for n, _ in block.named_children()) == ["dropout", "norm_final"]
    x = torch.randn(2, 9, 32)
    y, _ = block(x, torch.ones(2, 1, 9, dtype=torch.bool))
    assert torch.allclose(y, block.norm_final(x))
    out, olens, _ = enc(torch.randn(2, 40, 20), torch.tensor([40, 33]))
    assert torch.isfinite(out).all()
    # ff_scale of a macaron block stays 0.5 even when FFN1 is gone
    assert enc.encoders[2].ff_scale == 0.5


def test_structure_bigger_than_dense_is_rejected(tiny_conf):
    blocks = [BlockStructure(5, 1, 1, 1).to_dict()] + [BlockStructure(1, 1, 1, 1).to_dict()] * 2
    with pytest.raises(ValueError, match=r"block_structures\[0\]\.heads"):
        PrunedConformerEncoder(20, block_structures=blocks, **tiny_conf)
    with pytest.raises(ValueError, match="num_blocks"):
        PrunedConformerEncoder(20, block_structures=blocks[:2], **tiny_conf)


def _gated_asr(tmp_path, seed=0):
    config = write_asr_config(tmp_path / "gated.yaml", "gated_conformer", dict(conf_variant("latest_rel_macaron")))
    model, args = build_asr(config)
    _random_model_weights(model, seed)
    randomize_batchnorm(model, seed)
    set_random_gates(model.encoder, seed)
    return model.eval(), args


def test_shrunk_asr_model_same_ctc_posteriors(tmp_path):
    model, args = _gated_asr(tmp_path)
    assert list(gated_parts(model)) == ["encoder"]  # a dense decoder is not a gated part
    shrunk, shrunk_args = shrink_asr_model(model, args)
    assert shrunk_args.encoder == "pruned_conformer"
    assert gated_parts(shrunk) == {} and not isinstance(shrunk.encoder, GatedPart)
    speech = torch.randn(2, 16000, generator=torch.Generator().manual_seed(3))
    lengths = torch.tensor([16000, 11000])
    with torch.no_grad():
        enc_g, lens_g = model.encode(speech, lengths)
        enc_s, lens_s = shrunk.encode(speech, lengths)
        m = valid_mask(lens_g, enc_g.size(1))
        assert (((enc_g - enc_s) * m).abs().max()) <= 1e-4
        lp_g = model.ctc.log_softmax(enc_g)
        lp_s = shrunk.ctc.log_softmax(enc_s)
    assert ((lp_g - lp_s) * m).abs().max() <= 1e-4


def test_shrink_command_writes_a_self_describing_model(tmp_path, capsys):
    from espnet_prune.bin import shrink as shrink_bin
    from espnet_prune.model_io import build_asr_model, save_asr_model

    model, args = _gated_asr(tmp_path, seed=4)
    save_asr_model(tmp_path / "gated", model, args)
    summary = shrink_bin.main([
        "--asr_train_config", str(tmp_path / "gated/config.yaml"),
        "--asr_model_file", str(tmp_path / "gated/model.pth"),
        "--output_dir", str(tmp_path / "shrunk"),
    ])
    printed = json.loads(capsys.readouterr().out)
    assert printed["params_shrunk_model"] == summary["params_shrunk_model"]
    rebuilt, rargs = build_asr_model(tmp_path / "shrunk/config.yaml", tmp_path / "shrunk/model.pth")
    assert type(rebuilt.encoder).__name__ == "PrunedConformerEncoder"
    assert summary["params_shrunk_model"] == sum(p.numel() for p in rebuilt.parameters())
    assert summary["params_shrunk_model"] < summary["params_gated_model"]
    rebuilt.eval()
    speech = torch.randn(1, 12000)
    with torch.no_grad():
        a, _ = model.encode(speech, torch.tensor([12000]))
        b, _ = rebuilt.encode(speech, torch.tensor([12000]))
    assert (a - b).abs().max() <= 1e-4
    # no temp files left behind
    assert sorted(p.name for p in (tmp_path / "shrunk").iterdir()) == ["config.yaml", "model.pth", "summary.json"]
    assert json.loads((tmp_path / "shrunk/summary.json").read_text()) == printed


def test_shrink_command_picks_nested_sizes_from_one_checkpoint(tmp_path, capsys):
    from espnet_prune.bin import shrink as shrink_bin
    from espnet_prune.model_io import save_asr_model

    model, args = _gated_asr(tmp_path, seed=5)
    save_asr_model(tmp_path / "gated", model, args)
    common = ["--asr_train_config", str(tmp_path / "gated/config.yaml"),
              "--asr_model_file", str(tmp_path / "gated/model.pth")]
    sizes = []
    for target in (0.1, 0.2, 0.3):
        summary = shrink_bin.main(common + ["--target", f"encoder_params:{target}",
                                            "--output_dir", str(tmp_path / f"shrunk_{target}")])
        assert summary["target"] == {"kind": "encoder_params", "sparsity": target,
                                     "achieved": summary["target"]["achieved"], "rule": "nested"}
        assert abs(summary["target"]["achieved"] - target) <= 0.02
        sizes.append([s for b in summary["block_structures"] for s in b.values()])
    # nested: no block keeps more heads / units / channels at a higher sparsity
    for small, large in zip(sizes[1:], sizes):
        assert all(a <= b for a, b in zip(small, large)) and small != large
    with pytest.raises(SystemExit, match="--target flops:0.5"):
        shrink_bin.main(common + ["--target", "flops:0.5", "--output_dir", str(tmp_path / "x")])
    capsys.readouterr()


def test_loading_checks_keys(tmp_path):
    from espnet_prune.model_io import build_asr_model, save_asr_model

    model, args = _gated_asr(tmp_path)
    state = model.state_dict()
    state.pop("encoder.encoders.0.norm_mha.weight")
    torch.save(state, tmp_path / "broken.pth")
    save_asr_model(tmp_path / "ok", model, args)
    with pytest.raises(RuntimeError, match="encoders.0.norm_mha.weight"):
        build_asr_model(tmp_path / "ok/config.yaml", tmp_path / "broken.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_asr_model(tmp_path / "ok/config.yaml", tmp_path / "nope.pth")
