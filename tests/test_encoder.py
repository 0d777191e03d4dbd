"""Gated encoder: drop-in for ESPnet's ConformerEncoder."""

import pytest
import torch
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

from conftest import CONF_VARIANTS, conf_variant, valid_mask
from espnet_prune.encoder import GatedConformerEncoder
from espnet_prune.structure import GRANULARITIES


def _open_all(encoder):
    for p in encoder.gate_parameters():
        p.data.fill_(10.0)  # P(open) ~ 1 and median value clamps to exactly 1


@pytest.mark.parametrize("variant", sorted(CONF_VARIANTS))
def test_all_gates_open_equals_espnet_conformer(variant):
    torch.manual_seed(0)
    conf = conf_variant(variant)
    ref = ConformerEncoder(20, **conf)
    for p in ref.parameters():  # non-trivial values for every parameter (biases too)
        p.data.normal_(0, 0.3)
    gated = GatedConformerEncoder(20, **conf)
    missing, unexpected = gated.load_state_dict(ref.state_dict(), strict=False)
    assert unexpected == []
    assert all(".gates." in k for k in missing), missing
    assert set(ref.state_dict()) <= set(gated.state_dict())
    _open_all(gated)
    ref.eval(), gated.eval()
    x = torch.randn(3, 61, 20)
    lengths = torch.tensor([61, 45, 20])
    y_ref, olens_ref, _ = ref(x, lengths)
    y, olens, _ = gated(x, lengths)
    assert torch.equal(olens, olens_ref)
    m = valid_mask(olens, y.size(1))
    assert ((y - y_ref) * m).abs().max().item() <= 1e-5


def test_train_mode_samples_and_eval_is_deterministic(tiny_conf):
    torch.manual_seed(0)
    enc = GatedConformerEncoder(20, **tiny_conf)
    x, lengths = torch.randn(2, 40, 20), torch.tensor([40, 30])
    enc.train()
    a, b = enc(x, lengths)[0], enc(x, lengths)[0]
    assert (a - b).abs().max() > 1e-4
    enc.eval()
    assert torch.equal(enc(x, lengths)[0], enc(x, lengths)[0])


def test_gradients_reach_log_alpha(tiny_conf):
    enc = GatedConformerEncoder(20, **tiny_conf).train()
    y, _, _ = enc(torch.randn(2, 40, 20), torch.tensor([40, 30]))
    y.pow(2).sum().backward()
    grads = [p.grad for p in enc.gate_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_granularity_selection(tiny_conf):
    enc = GatedConformerEncoder(20, gate_granularities=["heads", "conv"], **tiny_conf)
    keys = {k.split(".gates.")[1] for k in enc.state_dict() if ".gates." in k}
    assert keys == {"heads.log_alpha", "conv.log_alpha"}
    assert enc.encoders[0].gates["heads"].n == tiny_conf["attention_heads"]
    full = GatedConformerEncoder(20, **tiny_conf)
    assert set(full.encoders[0].gates) | {"subsampling_channels"} == set(GRANULARITIES)
    assert full.gated_frontend and [g.n for g in full.embed.gates] == [tiny_conf["output_size"]] * 2
    assert not enc.gated_frontend
    linear = GatedConformerEncoder(20, **dict(tiny_conf, input_layer="linear"))
    assert not linear.gated_frontend  # the default skips gates that do not apply ...
    with pytest.raises(ValueError, match="subsampling_channels needs a conv front end"):
        GatedConformerEncoder(20, gate_granularities=["subsampling_channels"],
                              **dict(tiny_conf, input_layer="linear"))  # ... a named one fails
    assert full.encoders[0].gates["ffn1_units"].n == tiny_conf["linear_units"]
    assert full.encoders[0].gates["conv_channels"].n == tiny_conf["output_size"]


def test_gate_conf_reaches_gates(tiny_conf):
    enc = GatedConformerEncoder(20, gate_conf={"init_keep_prob": 0.6, "init_std": 0.0}, **tiny_conf)
    probs = torch.cat([g.keep_prob() for b in enc.encoders for g in b.gates.values()])
    assert torch.allclose(probs, torch.full_like(probs, 0.6), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(gate_granularities=["heads", "ffn_units"]), "ffn_units"),
        (dict(gate_conf={"init_keep": 0.5}), "init_keep"),
        (dict(concat_after=True), "concat_after"),
        (dict(normalize_before=False), "normalize_before"),
        (dict(positionwise_layer_type="conv1d"), "positionwise_layer_type"),
    ],
)
def test_bad_config_names_the_key(tiny_conf, kwargs, key):
    tiny_conf.update(kwargs)
    with pytest.raises(ValueError, match=key):
        GatedConformerEncoder(20, **tiny_conf)


def test_print_config_shows_every_conformer_option():
    """ESPnet's --print_config reads the class signature: ours lists the Conformer's options too."""
    from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
    from espnet2.utils.get_default_kwargs import get_default_kwargs

    from espnet_prune.pruned_encoder import PrunedConformerEncoder

    dense = get_default_kwargs(ConformerEncoder)
    gated = get_default_kwargs(GatedConformerEncoder)
    assert {k: gated[k] for k in dense} == dense
    assert gated["gate_granularities"] is None and gated["gate_conf"] is None
    assert get_default_kwargs(PrunedConformerEncoder) == dict(dense, subsampling_channels=None)
