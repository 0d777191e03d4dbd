"""RESULTS.md figures: train.log parser, kept-structure numbers, PNG files."""

import numpy as np
import pytest

from espnet_prune.recipe import kept, plots, trainlog

PREFIX = "[vm] 2026-11-26 22:37:50,400 (trainer:811) INFO: "


def _interval(epoch, a, b, **kv):
    return f"{PREFIX}{epoch}epoch:train:{a}-{b}batch: " + ", ".join(
        f"{k}={v}" for k, v in kv.items()) + "\n"


def _results(epoch, total):
    return (f"{PREFIX}{epoch}epoch results: [train] iter_time=0.011, expected_sparsity=0.1, "
            f"train_time=1.0, time=46.12 seconds, total_count={total}, [valid] loss=9.2, "
            "time=2.73 seconds, total_count=4\n")


def _log(tmp_path, text):
    p = tmp_path / "train.log"
    p.write_text(text)
    return p


# --------------------------------------------------------------------------- train.log


def test_train_log_steps_from_total_count_and_glued_pairs(tmp_path):
    text = ("# python -m espnet_prune.bin.asr_train --config x.yaml\n"
            "ESPnetPruneASRModel(\n  (encoder): ...\n)\n"
            + _interval(1, 1, 10, expected_sparsity=0.095, target_sparsity=0.108,
                        lambda1=-0.084, lambda2=0.081)
            # pairs glued without ', ' and an exponent: still parsed
            + f"{PREFIX}1epoch:train:11-20batch: loss=7.4, expected_sparsity=0.108, "
              "target_sparsity=0.135eval_sparsity=0.500, max_overshoot=0.000e+00, "
              "lambda1=-0.278, lambda2=0.264, matched_layer4=4.000backward_time=0.405\n"
            + _results(1, 23)  # epoch 1 had 23 updates (the last 3 not logged)
            + _interval(2, 1, 10, expected_sparsity=0.2, target_sparsity=0.25, lambda1=-1.5,
                        lambda2=1.25e-1)
            + _interval(2, 11, 20, expected_sparsity=0.3, target_sparsity=0.3, lambda1=-2,
                        lambda2=0.5, note="text")
            + _results(2, 46))
    c = trainlog.parse_train_log(_log(tmp_path, text), required=trainlog.PRUNING_KEYS)
    assert c.steps.tolist() == [10, 20, 33, 43]
    assert c.epochs.tolist() == [1, 1, 2, 2]
    assert not c.approximate_steps
    np.testing.assert_array_equal(c.get("target_sparsity"), [0.108, 0.135, 0.25, 0.3])
    np.testing.assert_array_equal(c.get("lambda2"), [0.081, 0.264, 0.125, 0.5])
    assert c.values["eval_sparsity"][1] == 0.5 and np.isnan(c.values["eval_sparsity"][0])
    assert c.values["max_overshoot"][1] == 0.0
    assert c.values["matched_layer4"][1] == 4.0 and c.values["backward_time"][1] == 0.405
    assert "note" not in c.values  # not a number
    with pytest.raises(KeyError, match="no 'kl_ctc='"):
        c.get("kl_ctc")


def test_train_log_without_epoch_totals_and_with_a_resumed_epoch(tmp_path):
    """No 'results' lines: an epoch's offset is the previous one's last logged batch
    (flagged approximate). A re-logged interval (resume) keeps its last values."""
    text = (_interval(1, 1, 10, expected_sparsity=0.1, lambda1=1)
            + _interval(1, 11, 20, expected_sparsity=0.2, lambda1=2)
            + _interval(2, 1, 10, expected_sparsity=0.3, lambda1=3)
            + _interval(2, 1, 10, expected_sparsity=0.35, lambda1=3.5)  # resumed
            + _interval(2, 11, 20, expected_sparsity=0.4, lambda1=4))
    c = trainlog.parse_train_log(_log(tmp_path, text))
    assert c.steps.tolist() == [10, 20, 30, 40]
    assert c.approximate_steps
    assert c.get("expected_sparsity").tolist() == [0.1, 0.2, 0.35, 0.4]


def test_train_log_errors_name_file_and_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.log"):
        trainlog.parse_train_log(tmp_path / "nothere.log")
    p = _log(tmp_path, "no interval here\n")
    with pytest.raises(ValueError, match="train.log: no training interval"):
        trainlog.parse_train_log(p)
    p = _log(tmp_path, _interval(1, 1, 10, loss=1.0))
    with pytest.raises(ValueError, match="'expected_sparsity='"):
        trainlog.parse_train_log(p, required=trainlog.PRUNING_KEYS)
    with pytest.raises(ValueError, match="NAME=PATH"):
        trainlog.parse_named_logs(["just_a_path"])
    with pytest.raises(FileNotFoundError, match="missing.log"):
        trainlog.parse_named_logs([f"a={tmp_path / 'missing.log'}"])


# --------------------------------------------------------------------------- kept structure

ENC_CONF = dict(output_size=32, attention_heads=4, linear_units=48, num_blocks=3,
                input_layer="conv2d6", macaron_style=True, use_cnn_module=True,
                rel_pos_type="latest", pos_enc_layer_type="rel_pos",
                selfattention_layer_type="rel_selfattn", cnn_module_kernel=7)
BLOCKS = [{"heads": 2, "ffn1_units": 12, "ffn2_units": 48, "conv_channels": 8},
          {"heads": 0, "ffn1_units": 0, "ffn2_units": 0, "conv_channels": 0},
          {"heads": 4, "ffn1_units": 36, "ffn2_units": 6, "conv_channels": 32}]
DEC_CONF = dict(attention_heads=4, linear_units=64, num_blocks=2)
LAYERS = [{"self_heads": 1, "src_heads": 4, "ffn_units": 16},
          {"self_heads": 0, "src_heads": 0, "ffn_units": 0}]


def _config(encoder="pruned_conformer", decoder="pruned_transformer", **enc):
    ec = dict(ENC_CONF, **enc)
    dc = dict(DEC_CONF)
    if encoder == "pruned_conformer":
        ec.setdefault("block_structures", BLOCKS)
        ec.setdefault("subsampling_channels", [24, 8])
    if decoder == "pruned_transformer":
        dc["layer_structures"] = LAYERS
    return {"input_size": 20, "token_list": ["<blank>", "a", "<sos/eos>"], "encoder": encoder,
            "encoder_conf": ec, "decoder": decoder, "decoder_conf": dc}


def test_kept_fractions_of_a_known_config():
    k = kept.kept_structure(_config())
    # front end: 2 Conv2d (conv2d6) of output_size=32 channels
    np.testing.assert_array_equal(k.frontend_fraction, [24 / 32, 8 / 32])
    # columns: FFN1 units (of 48), MHA heads (of 4), conv channels (of 32), FFN2 units (of 48)
    np.testing.assert_array_equal(k.encoder_fraction, [[12 / 48, 2 / 4, 8 / 32, 48 / 48],
                                                       [0, 0, 0, 0],
                                                       [36 / 48, 4 / 4, 32 / 32, 6 / 48]])
    # columns: self heads (of 4), source heads (of 4), FFN units (of 64)
    np.testing.assert_array_equal(k.decoder_fraction, [[1 / 4, 4 / 4, 16 / 64], [0, 0, 0]])
    assert k.pruned
    d = k.to_dict()
    assert d["encoder"]["kept"][2] == [36, 4, 32, 6] and d["decoder"]["dense"][0] == [4, 4, 64]


def test_dense_models_keep_everything_and_missing_modules_are_nan():
    k = kept.kept_structure(_config(encoder="conformer", decoder="transformer"))
    assert not k.pruned
    assert (k.frontend_fraction == 1).all() and (k.encoder_fraction == 1).all()
    assert (k.decoder_fraction == 1).all() and k.decoder_fraction.shape == (2, 3)
    # no macaron FFN and no conv module: their columns do not exist in the dense model
    k = kept.kept_structure(_config(encoder="conformer", decoder="transformer",
                                    macaron_style=False, use_cnn_module=False,
                                    input_layer="linear"))
    assert np.isnan(k.encoder_fraction[:, 0]).all() and np.isnan(k.encoder_fraction[:, 2]).all()
    assert (k.encoder_fraction[:, [1, 3]] == 1).all()
    assert k.frontend_kept.size == 0


def test_kept_structure_errors_name_the_key():
    with pytest.raises(kept.StructureError, match="gated_conformer"):
        kept.kept_structure(_config(encoder="gated_conformer"))
    bad = [dict(BLOCKS[0], heads=5)] + BLOCKS[1:]
    with pytest.raises(kept.StructureError, match=r"block_structures\[0\]\.heads=5"):
        kept.kept_structure(_config(block_structures=bad))
    with pytest.raises(kept.StructureError, match="subsampling_channels has 3 entries"):
        kept.kept_structure(_config(subsampling_channels=[8, 8, 8]))


# --------------------------------------------------------------------------- PNG files


def test_figures_are_written_as_png(tmp_path):
    k = kept.kept_structure(_config())
    text = "".join(_interval(e, a, a + 9, expected_sparsity=0.1 * e, target_sparsity=0.1 * e,
                             lambda1=-e, lambda2=e) for e in (1, 2) for a in (1, 11))
    curve = trainlog.parse_train_log(_log(tmp_path, text))
    out = tmp_path / "figs"
    plots.plot_kept_structure("pruned", k, out / "structure.png")
    plots.plot_training_curves([("a", curve), ("b", curve)], out / "training.png")
    plots.plot_wer_vs_params([plots.WerPoint("base", "dev", 3_500_000, 9.5, (8.0, 11.0)),
                              plots.WerPoint("pruned", "dev", 1_750_000, 9.9, None),
                              plots.WerPoint("family_params0.3", "dev", 2_450_000, 9.7, None),
                              plots.WerPoint("family_params0.5", "dev", 1_750_000, 9.9, None),
                              plots.WerPoint("base", "test", 3_500_000, 11.0, (9.0, 13.0))],
                             out / "wer.png")
    assert [plots.size_curve(m) for m in ("family_params0.3", "family_macs0.25_shrunk", "prune_params0.5",
                                          "baseline", "scratch_params0.3", "family_params0.3_0.5")] == [
        "family", "family, shrunk", "pruned separately", None, None, None]
    for name in ("structure.png", "training.png", "wer.png"):
        data = (out / name).read_bytes()
        assert data[:8] == plots.PNG_SIGNATURE and len(data) > 5000
    assert sorted(p.name for p in out.iterdir()) == ["structure.png", "training.png", "wer.png"]
