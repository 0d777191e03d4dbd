"""The ``decode`` cost (seconds of a beam-search decode, priced by a latency table), its fit,
and the bound that holds it while a size target holds the parameters."""

from __future__ import annotations

import random

import pytest
import torch
import yaml

from conftest import TINY_CONF, build_asr, conf_variant, set_random_decoder_gates, set_random_gates, write_asr_config
from espnet_prune.bin.latency import fit, model_decode_seconds
from espnet_prune.cost.latency import LatencyTable
from espnet_prune.targets import CostContext, build_selector, dense_decoder_macs

#: coefficients of a made-up machine, chosen so that every term moves the total
TABLE = dict(frontend_mac_s=1e-9, encoder_mac_s=3e-9, encoder_module_s=dict(ffn1=2e-3, mha=3e-3, conv=2.5e-3, ffn2=1e-3),
             decoder_mac_s=5e-8, decoder_sublayer_s=dict(self_attn=4e-4, src_attn=3e-4, ffn=2e-4),
             step_s=1e-3, utterance_s=5e-3, beam=4)
#: ESPnet's attribute of each kind of module / sublayer
ENCODER_ATTRS = dict(ffn1="feed_forward_macaron", mha="self_attn", conv="conv_module", ffn2="feed_forward")
DECODER_ATTRS = dict(self_attn="self_attn", src_attn="src_attn", ffn="feed_forward")
DECODER_CONF = dict(attention_heads=2, linear_units=32, num_blocks=2, dropout_rate=0.0,
                    positional_dropout_rate=0.0, self_attention_dropout_rate=0.0,
                    src_attention_dropout_rate=0.0)


@pytest.fixture
def gated_asr(tmp_path):
    path = write_asr_config(tmp_path / "c.yaml", "gated_conformer", dict(TINY_CONF), input_size=20)
    conf = yaml.safe_load(path.read_text())
    conf["decoder"], conf["decoder_conf"] = "gated_transformer", dict(DECODER_CONF)
    path.write_text(yaml.safe_dump(conf))
    model, args = build_asr(path)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "log_alpha" not in name:
                p.normal_(0.0, 0.3)
    return model.eval(), args


def _decode_seconds_by_hand(shrunk: torch.nn.Module, table: dict, frames: int, steps: int) -> float:
    """The latency formula on a shrunk model, its quantities read off its modules: encoder
    and front-end MACs from torch's FLOP counter, kept modules and sublayers counted, decoder
    MACs from the decoder cost model (checked against torch's counter in test_gated_decoder)."""
    from torch.utils.flop_counter import FlopCounterMode

    from espnet_prune.bin.profile import count_encoder_macs

    enc_macs = count_encoder_macs(shrunk.encoder, 20, frames)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        shrunk.encoder.embed(torch.zeros(1, frames, 20), torch.ones(1, 1, frames, dtype=torch.bool))
    fe_macs = counter.get_total_flops() // 2
    modules = sum(table["encoder_module_s"][kind] for layer in shrunk.encoder.encoders
                  for kind, attr in ENCODER_ATTRS.items() if getattr(layer, attr) is not None)
    sublayers = sum(table["decoder_sublayer_s"][kind] for layer in shrunk.decoder.decoders
                    for kind, attr in DECODER_ATTRS.items() if getattr(layer, attr) is not None)
    t_enc = shrunk.encoder(torch.zeros(1, frames, 20), torch.tensor([frames]))[0].size(1)
    dec_macs = dense_decoder_macs(shrunk.decoder, t_enc, steps)
    return (table["frontend_mac_s"] * fe_macs + table["encoder_mac_s"] * (enc_macs - fe_macs)
            + modules + table["decoder_mac_s"] * dec_macs
            + steps * sublayers + table["step_s"] * steps + table["utterance_s"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decode_cost_is_the_latency_formula_on_the_shrunk_model(gated_asr, seed):
    from espnet_prune.shrink import shrink_asr_model

    model, args = gated_asr
    set_random_gates(model.encoder, seed, p_close_module=0.4)
    set_random_decoder_gates(model.decoder, seed + 10, p_close=0.4)
    ctx = CostContext(seconds=1.5, tokens=6, latency=LatencyTable(**TABLE))
    selector = build_selector(model, "decode", 0.4, ctx).attach()
    shrunk, shrunk_args = shrink_asr_model(model, args)
    shrunk.eval()
    expected = _decode_seconds_by_hand(shrunk, TABLE, ctx.input_frames, ctx.tokens)
    assert selector.achieved_cost() == pytest.approx(expected, rel=1e-9)
    assert model_decode_seconds(shrunk, shrunk_args, ctx.latency, 1.5, 100.0, 6) == pytest.approx(expected, rel=1e-9)
    # a table that records where it was measured prices that utterance, whatever the context
    measured_at = CostContext(latency=LatencyTable(**TABLE, seconds=1.5, steps=6))
    assert build_selector(model, "decode", 0.4, measured_at).achieved_cost() == pytest.approx(expected, rel=1e-9)
    # the dense model: every module and sublayer kept
    for gate in [g for part in selector.parts.values() for g in part.gate_parameters()]:
        gate.data.fill_(10.0)
    dense_selector = build_selector(model, "decode", None, ctx).attach()
    dense, _ = shrink_asr_model(model, args)
    assert dense_selector.dense_cost() == pytest.approx(
        _decode_seconds_by_hand(dense.eval(), TABLE, ctx.input_frames, ctx.tokens), rel=1e-9)
    # expected cost of near-deterministic gates is the cost of their structure
    assert float(dense_selector.expected_cost()) == pytest.approx(dense_selector.dense_cost(), rel=1e-3)


def test_removing_a_decoder_sublayer_saves_its_overhead_every_step(gated_asr):
    model, _ = gated_asr
    for gate in [g for p in (model.encoder, model.decoder) for g in p.gate_parameters()]:
        gate.data.fill_(10.0)
    ctx = CostContext(seconds=1.5, tokens=6, latency=LatencyTable(**TABLE))
    full = build_selector(model, "decode", None, ctx).achieved_cost()
    model.decoder.decoders[1].gates["self_attn"].log_alpha.data.fill_(-10.0)
    without = build_selector(model, "decode", None, ctx).achieved_cost()
    # the sublayer's call overhead for every step, plus its MACs (2 heads, d = 32: the new
    # token's q/k/v/out projections and attention over the prefix, for steps 1..6)
    d, heads, d_k, steps = 32, 2, 16, 6
    macs = sum((4 * d * d_k + 2 * d_k * t) * heads for t in range(1, steps + 1))
    assert full - without == pytest.approx(
        TABLE["decoder_sublayer_s"]["self_attn"] * steps + TABLE["decoder_mac_s"] * macs, rel=1e-9)


def test_fit_recovers_the_table_of_noise_free_decodes():
    rng = random.Random(0)
    c_d, rest = 3e-4, 7e-4  # decoder and search seconds per step that no module carries
    rows = []
    for _ in range(16):
        steps = 16
        q = dict(fe_macs=rng.uniform(1e7, 2e8), block_macs=rng.uniform(1e8, 3e8),
                 enc_modules={k: rng.randint(0, 4) for k in ENCODER_ATTRS},
                 dec_macs=rng.uniform(1e5, 1e7), dec_sublayers={k: rng.randint(0, 2) for k in DECODER_ATTRS},
                 steps=steps)
        encoder = (TABLE["frontend_mac_s"] * q["fe_macs"] + TABLE["encoder_mac_s"] * q["block_macs"] + TABLE["utterance_s"]
                   + sum(TABLE["encoder_module_s"][k] * n for k, n in q["enc_modules"].items()))
        decoder = (TABLE["decoder_mac_s"] * q["dec_macs"] + c_d * steps
                   + sum(TABLE["decoder_sublayer_s"][k] * steps * n for k, n in q["dec_sublayers"].items()))
        rows.append(dict(q, encoder=encoder, decoder=decoder, total=encoder + decoder + rest * steps))
    table = fit(rows, beam=4, threads=1)
    for name in ("frontend_mac_s", "encoder_mac_s", "decoder_mac_s", "utterance_s"):
        assert getattr(table, name) == pytest.approx(TABLE[name], rel=1e-6), name
    for name in ("encoder_module_s", "decoder_sublayer_s"):
        for kind, value in TABLE[name].items():
            assert getattr(table, name)[kind] == pytest.approx(value, rel=1e-6), (name, kind)
    assert table.step_s == pytest.approx(c_d + rest, rel=1e-6)


def test_table_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "latency.yaml"
    bad.write_text(yaml.safe_dump(dict(TABLE, encoder_mac_s=-1.0)))
    with pytest.raises(ValueError, match=r"latency.yaml: encoder_mac_s=-1.0 must be a number >= 0"):
        LatencyTable.from_conf(bad)
    bad.write_text(yaml.safe_dump({k: v for k, v in TABLE.items() if k != "step_s"}))
    with pytest.raises(ValueError, match=r"latency.yaml: .*missing keys \['step_s'\]"):
        LatencyTable.from_conf(bad)
    bad.write_text(yaml.safe_dump(dict(TABLE, decoder_sublayer_s=dict(self_attn=1.0, ffn=1.0))))
    with pytest.raises(ValueError, match=r"latency.yaml: decoder_sublayer_s must map each of \['self_attn', 'src_attn', 'ffn'\]"):
        LatencyTable.from_conf(bad)
    with pytest.raises(ValueError, match=r"latency table .*nowhere.yaml: cannot read it"):
        LatencyTable.from_conf(tmp_path / "nowhere.yaml")


def test_decode_target_without_a_table_is_refused(gated_asr):
    model, _ = gated_asr
    with pytest.raises(ValueError, match=r"a decode target or bound needs a latency table \(model_conf.latency_table"):
        build_selector(model, "decode", 0.3)


# --------------------------------------------------------------------------- the bound


def _pruning_model(tmp_path, bound):
    """A whole-model pruning model (gated encoder and decoder) with target params 0.4."""
    from espnet_prune.model_io import save_asr_model
    from espnet_prune.task import PruneASRTask

    def build(config):
        args = PruneASRTask.get_parser().parse_args(["--config", str(config), "--output_dir", "unused"])
        return PruneASRTask.build_model(args), args

    tmp_path.mkdir(parents=True, exist_ok=True)
    teacher_conf = write_asr_config(tmp_path / "teacher.yaml", "conformer", conf_variant("latest_rel_macaron"))
    teacher, args = build(teacher_conf)
    save_asr_model(tmp_path / "teacher", teacher, args)
    path = write_asr_config(tmp_path / "student.yaml", "gated_conformer", conf_variant("latest_rel_macaron"))
    conf = yaml.safe_load(path.read_text())
    conf.update(model="prune_espnet", decoder="gated_transformer", init="xavier_uniform")
    conf["model_conf"].update(
        teacher_config=str(tmp_path / "teacher" / "config.yaml"),
        teacher_model_file=str(tmp_path / "teacher" / "model.pth"),
        target={"params": 0.4}, target_warmup_steps=50, latency_table=TABLE,
        cost_seconds=1.0, cost_tokens=8, **({"bound": bound} if bound else {}))
    path.write_text(yaml.safe_dump(conf))
    return build(path)[0].train()


def _control_steps(model, steps: int):
    """Train the gates and multipliers on the sparsity control's loss alone."""
    gates = [p for n, p in model.named_parameters() if n.endswith("log_alpha")]
    multipliers = [p for n, p in model.named_parameters() if n.startswith("pruning.lambda")]
    opt_g = torch.optim.Adam(gates, lr=0.1, betas=(0.9, 0.9))
    opt_m = torch.optim.Adam(multipliers, lr=0.02)
    stats = {}
    for _ in range(steps):
        model.pruning.num_updates += 1
        loss, stats = model.control.after(None, training=True)
        opt_g.zero_grad(), opt_m.zero_grad()
        loss.backward()
        opt_g.step(), opt_m.step()
    return {k: float(v) for k, v in stats.items()}


def test_bound_holds_the_decode_cost_while_the_target_holds_the_parameters(tmp_path, one_thread):
    model = _pruning_model(tmp_path / "free", None)
    free = _control_steps(model, 300)
    free_decode = float(build_selector(model, "decode", None, model.cost_ctx).expected_sparsity())
    bound = round(free_decode + 0.1, 2)  # more decode saving than the target alone gives
    held = _control_steps(_pruning_model(tmp_path / "held", {"decode": bound}), 300)
    print(free, free_decode, held)
    assert free["expected_sparsity"] == pytest.approx(0.4, abs=0.01)
    assert held["expected_sparsity"] == pytest.approx(0.4, abs=0.01)
    assert held["bound_target"] == pytest.approx(bound)
    assert held["bound_sparsity"] >= bound - 0.01, held
    assert held["lambda_bound"] > 0
