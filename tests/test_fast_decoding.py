"""The fast decoder in ESPnet's inference code: Speech2Text, the asr_inference entry point,
``decoder: pruned_transformer`` configs and the decoder section of ``bin/profile``."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_CONF, build_asr, write_asr_config
from espnet_prune.model_io import build_asr_model, save_asr_model

VOCAB = ["<blank>", "<unk>", "A", "B", "C", "D", "E", " ", "<sos/eos>"]
DECODER_CONF = {"attention_heads": 4, "linear_units": 32, "num_blocks": 2, "dropout_rate": 0.0,
                "positional_dropout_rate": 0.0, "self_attention_dropout_rate": 0.0,
                "src_attention_dropout_rate": 0.0}
LAYERS = [{"self_heads": 3, "src_heads": 1, "ffn_units": 20},
          {"self_heads": 0, "src_heads": 4, "ffn_units": 7}]


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(path: Path, decoder: str = "transformer", **decoder_conf) -> Path:
    write_asr_config(path, "conformer", dict(TINY_CONF), vocab=VOCAB, input_size=20)
    conf = yaml.safe_load(path.read_text())
    conf["decoder"] = decoder
    conf["decoder_conf"] = (dict(DECODER_CONF, **decoder_conf) if "transformer" in decoder
                            else decoder_conf)
    path.write_text(yaml.safe_dump(conf))
    return path


def _model_dir(tmp_path: Path, name: str, decoder: str = "transformer", **decoder_conf) -> Path:
    model, args = build_asr(_config(tmp_path / f"{name}.yaml", decoder, **decoder_conf))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.4)
    save_asr_model(tmp_path / name, model, args)
    return tmp_path / name


def _feats(n: int = 3):
    rng = np.random.default_rng(0)
    return [rng.standard_normal((60 + 25 * i, 20)).astype(np.float32) for i in range(n)]


def _speech2text(model_dir: Path, **kw):
    from espnet2.bin.asr_inference import Speech2Text

    return Speech2Text(asr_train_config=str(model_dir / "config.yaml"),
                       asr_model_file=str(model_dir / "model.pth"), device="cpu",
                       beam_size=3, ctc_weight=0.3, maxlenratio=0.0, nbest=2, **kw)


def test_speech2text_fast_decoding_identical(tmp_path):
    import espnet_prune
    from espnet2.asr.decoder.transformer_decoder import TransformerDecoder

    from espnet_prune.pruned_decoder import PrunedTransformerDecoder

    d = _model_dir(tmp_path, "dense")
    plain, fast = _speech2text(d), _speech2text(d)
    old = fast.asr_model.decoder
    assert type(old) is TransformerDecoder
    assert espnet_prune.fast_decoding(fast) is True
    new = fast.asr_model.decoder
    assert type(new) is PrunedTransformerDecoder and not new.training
    assert fast.beam_search.full_scorers["decoder"] is new
    assert fast.beam_search.scorers["decoder"] is new and fast.beam_search.nn_dict["decoder"] is new
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))
    assert espnet_prune.fast_decoding(fast) is True  # idempotent
    emitted = 0
    for x in _feats():
        r1, r2 = plain(torch.from_numpy(x)), fast(torch.from_numpy(x))
        assert [r[2] for r in r1] == [r[2] for r in r2]  # token ids of the n-best
        for a, b in zip(r1, r2):
            assert abs(float(a[3].score) - float(b[3].score)) <= 1e-4
        emitted += len(r1[0][2])
    assert emitted > 0


def test_fast_decoding_refuses_other_decoders(tmp_path):
    import espnet_prune

    d = _model_dir(tmp_path, "rnn", "rnn", num_layers=1, hidden_size=16)
    s2t = _speech2text(d)
    with pytest.raises(TypeError, match="RNNDecoder"):
        espnet_prune.fast_decoding(s2t)
    assert espnet_prune.fast_decoding(s2t, require=False) is False
    assert type(s2t.asr_model.decoder).__name__ == "RNNDecoder"


def _write_scp(tmp_path: Path) -> Path:
    ark, scp = tmp_path / "feats.ark", tmp_path / "feats.scp"
    with kaldiio.WriteHelper(f"ark,scp:{ark},{scp}") as w:
        for i, x in enumerate(_feats()):
            w(f"utt{i}", x)
    return scp


def _decoded(out_dir: Path):
    """(text and token_int per utterance, score per utterance) of an asr_inference run."""
    root = out_dir / "1best_recog"
    lines = {f: dict(line.split(maxsplit=1) if " " in line else (line, "")
                     for line in (root / f).read_text().splitlines())
             for f in ("text", "token_int", "score")}
    scores = {utt: float(v.strip().removeprefix("tensor(").removesuffix(")"))
              for utt, v in lines.pop("score").items()}
    return lines, scores


def _assert_same_decode(a, b) -> None:
    """Same texts and token ids; scores within 1e-4 (float32 sums in another order) plus
    the rounding of the written scores to 4 decimals."""
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys()
    assert all(abs(a[1][u] - b[1][u]) <= 2e-4 for u in a[1])


def test_asr_inference_fast_decoder_option(tmp_path, monkeypatch):
    from espnet_prune.bin import asr_inference
    from espnet_prune.pruned_decoder import PrunedTransformerDecoder

    d = _model_dir(tmp_path, "dense")
    scp = _write_scp(tmp_path)
    calls = []
    original = PrunedTransformerDecoder.batch_score

    def spy(self, *a, **kw):
        calls.append(1)
        return original(self, *a, **kw)

    monkeypatch.setattr(PrunedTransformerDecoder, "batch_score", spy)
    out = {}
    decode_conf = tmp_path / "decode.yaml"
    for fast in ("true", "false", "yaml"):
        argv = ["--asr_train_config", str(d / "config.yaml"), "--asr_model_file", str(d / "model.pth"),
                "--data_path_and_name_and_type", f"{scp},speech,kaldi_ark",
                "--output_dir", str(tmp_path / f"dec_{fast}"), "--batch_size", "1", "--beam_size", "3",
                "--ctc_weight", "0.3", "--maxlenratio", "0.0", "--ngpu", "0"]
        if fast == "yaml":  # the option in a decode config, like the recipe's
            decode_conf.write_text(yaml.safe_dump({"fast_decoder": False, "nbest": 1}))
            argv += ["--config", str(decode_conf)]
        else:
            argv += ["--fast_decoder", fast]
        n = len(calls)
        asr_inference.main(argv)
        assert (len(calls) > n) == (fast == "true")
        out[fast] = _decoded(tmp_path / f"dec_{fast}")
    _assert_same_decode(out["true"], out["false"])
    _assert_same_decode(out["yaml"], out["false"])
    assert sorted(out["true"][0]["text"]) == ["utt0", "utt1", "utt2"]
    from espnet2.bin import asr_inference as espnet_inference

    assert espnet_inference.Speech2Text.__module__ == "espnet2.bin.asr_inference"  # restored


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
def test_quantized_model_decodes_on_the_fast_path(tmp_path, monkeypatch):
    """``--quantize_asr_model true`` (ESPnet's dynamic int8 of every Linear) with
    ``--fast_decoder true``: the model is quantized after the decoder swap, so the fast decoder
    runs with int8 linears (it is called, its layers and the CTC projection are quantized
    modules); the int8 decode differs from the float one (quantization is on) by int8
    rounding only (total scores within 5 %). An already quantized ``Speech2Text`` is still
    refused by ``fast_decoding``, with the reason, its decoder left as it is."""
    from espnet2.asr.decoder.transformer_decoder import TransformerDecoder

    import espnet_prune
    from espnet_prune.bin import asr_inference
    from espnet_prune.pruned_decoder import PrunedTransformerDecoder

    quantized = torch.ao.nn.quantized.dynamic.Linear
    d = _model_dir(tmp_path, "dense")
    scp = _write_scp(tmp_path)
    calls = []
    original = PrunedTransformerDecoder.batch_score

    def spy(self, *a, **kw):
        calls.append(type(self.decoders[0].feed_forward.w_1))
        return original(self, *a, **kw)

    monkeypatch.setattr(PrunedTransformerDecoder, "batch_score", spy)
    out = {}
    for q in ("true", "false"):
        calls.clear()
        asr_inference.main(["--asr_train_config", str(d / "config.yaml"), "--asr_model_file",
                            str(d / "model.pth"), "--data_path_and_name_and_type",
                            f"{scp},speech,kaldi_ark", "--output_dir", str(tmp_path / f"q_{q}"),
                            "--batch_size", "1", "--beam_size", "3", "--ctc_weight", "0.3",
                            "--maxlenratio", "0.0", "--ngpu", "0", "--quantize_asr_model", q,
                            "--fast_decoder", "true"])
        assert calls and set(calls) == {quantized if q == "true" else torch.nn.Linear}
        out[q] = _decoded(tmp_path / f"q_{q}")
    assert any(out["true"][0]["token_int"].values())  # random weights still emit tokens
    int8, fp = out["true"][1], out["false"][1]
    assert int8.keys() == fp.keys()
    assert any(int8[u] != fp[u] for u in fp)  # int8 is on
    assert all(abs(int8[u] - fp[u]) <= 0.05 * abs(fp[u]) for u in fp)
    # the Python API: a quantized Speech2Text is refused, decoder left as it is
    s2t = _speech2text(d, quantize_asr_model=True)
    decoder = s2t.asr_model.decoder
    assert type(decoder) is TransformerDecoder
    assert isinstance(decoder.decoders[0].feed_forward.w_1, quantized)
    assert espnet_prune.fast_decoding(s2t, require=False) is False
    with pytest.raises(ValueError, match="quantized"):
        espnet_prune.fast_decoding(s2t)
    assert s2t.asr_model.decoder is decoder and s2t.beam_search.full_scorers["decoder"] is decoder


def test_pruned_transformer_yaml_config_round_trip(tmp_path):
    from espnet_prune.pruned_decoder import PrunedTransformerDecoder

    d = _model_dir(tmp_path, "pruned", "pruned_transformer", layer_structures=LAYERS)
    model, args = build_asr_model(d / "config.yaml", d / "model.pth")  # every key checked
    dec = model.decoder
    assert type(dec) is PrunedTransformerDecoder
    assert [s.to_dict() for s in dec.structure()] == LAYERS
    keys = [k for k in dec.state_dict() if k.startswith("decoders.1.")]
    assert not any(k.startswith(("decoders.1.self_attn", "decoders.1.norm1")) for k in keys)
    assert dec.decoders[0].self_attn.linear_q.weight.shape == (3 * 8, 32)  # d_k = 32 / 4
    # a pruned decoder decodes through ESPnet's Speech2Text as it is (fast), or with
    # ESPnet's incremental algorithm for timing comparisons: same hypotheses
    from espnet_prune.inference import espnet_decoding

    s2t, slow = _speech2text(d), _speech2text(d)
    assert s2t.beam_search.full_scorers["decoder"] is s2t.asr_model.decoder
    espnet_decoding(slow)
    assert slow.asr_model.decoder.use_fast_decoding is False
    for x in _feats(2):
        r1, r2 = s2t(torch.from_numpy(x)), slow(torch.from_numpy(x))
        assert [r[2] for r in r1] == [r[2] for r in r2]

    bad = _config(tmp_path / "bad.yaml", "pruned_transformer",
                  layer_structures=[LAYERS[0], {"self_heads": 1, "src_heads": 9, "ffn_units": 1}])
    with pytest.raises(ValueError, match=r"decoder_conf.layer_structures\[1\].src_heads=9 exceeds"):
        build_asr(bad)


def test_profile_reports_exact_decoder_cost(tmp_path, capsys):
    from espnet_prune.bin import profile

    for name, decoder, conf in (("dense", "transformer", {}),
                                ("pruned", "pruned_transformer", {"layer_structures": LAYERS})):
        d = _model_dir(tmp_path, name, decoder, **conf)
        capsys.readouterr()
        result = profile.main(["--asr_train_config", str(d / "config.yaml"), "--seconds", "2",
                               "--prefix_len", "5", "--tokens", "6"])
        assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(result))
        model, _ = build_asr_model(d / "config.yaml", d / "model.pth")
        dec = result["decoder"]
        assert dec["params"] == sum(p.numel() for p in model.decoder.parameters())
        assert dec["params"] == result["params"]["decoder"]
        assert dec["token_macs"] == dec["token_macs_counted"] > 0
        assert dec["memory_macs"] == dec["memory_macs_counted"] > 0
        frames = round(2 * result["frames_per_second"])
        with torch.no_grad():
            enc, _ = model.encode(torch.zeros(1, frames, 20), torch.tensor([frames]))
        assert dec["memory_frames"] == enc.size(1)
        if name == "pruned":
            assert dec["layer_structures"] == LAYERS and dec["params_sparsity"] > 0


def test_decode_list_runs_each_line_as_its_own_process_would(tmp_path):
    """espnet_prune.bin.decode_list (stage 8: one process per job): two decodes of one list,
    a dense and a pruned model, give exactly what asr_inference gives for each alone, and
    each writes its .done; a bad line is refused by file and line before anything runs."""
    from espnet_prune.bin import asr_inference, decode_list

    scp = _write_scp(tmp_path)
    lines, alone = [], {}
    for kind in ("dense", "pruned"):
        d = (_model_dir(tmp_path, kind) if kind == "dense"
             else _model_dir(tmp_path, kind, "pruned_transformer", layer_structures=LAYERS))
        argv = ["--asr_train_config", str(d / "config.yaml"), "--asr_model_file", str(d / "model.pth"),
                "--data_path_and_name_and_type", f"{scp},speech,kaldi_ark", "--batch_size", "1",
                "--beam_size", "3", "--ctc_weight", "0.3", "--ngpu", "0"]
        asr_inference.main(argv + ["--output_dir", str(tmp_path / f"alone_{kind}")])
        alone[kind] = _decoded(tmp_path / f"alone_{kind}")
        lines.append(" ".join(shlex.quote(a) for a in argv + ["--output_dir", str(tmp_path / f"list {kind}")]))
    listed = tmp_path / "decode.1.list"
    listed.write_text("# two decodes\n" + "\n".join(lines) + "\n\n")
    decode_list.main([str(listed)])
    for kind in ("dense", "pruned"):
        assert _decoded(tmp_path / f"list {kind}") == alone[kind], kind
        assert json.loads((tmp_path / f"list {kind}" / ".done").read_text())["wall_s"] >= 0
    assert alone["dense"][0]["token_int"] != alone["pruned"][0]["token_int"]  # two different decodes
    bad = tmp_path / "bad.list"
    bad.write_text(lines[0] + "\n" + lines[1].replace("--output_dir", "--output") + "\n")
    with pytest.raises(ValueError, match=f"{bad}:2: no --output_dir"):
        decode_list.main([str(bad)])
    bad.write_text("--output_dir 'open\n")
    with pytest.raises(ValueError, match=f"{bad}:1: No closing quotation"):
        decode_list.main([str(bad)])


def test_split_scp_rewrites_only_changed_parts(tmp_path):
    """Stage 8's staleness rule reads the parts' time stamps: an unchanged part keeps its
    file, a changed one is rewritten, parts beyond a smaller count go."""
    from espnet_prune.recipe.steps import split_scp

    scp = tmp_path / "feats.scp"
    scp.write_text("".join(f"u{i} a.ark:{i}\n" for i in range(5)))
    parts = split_scp(scp, 3, tmp_path / "log")
    assert [p.read_text() for p in parts] == ["u0 a.ark:0\n", "u1 a.ark:1\nu2 a.ark:2\n", "u3 a.ark:3\nu4 a.ark:4\n"]
    inodes = [p.stat().st_ino for p in parts]
    assert [p.stat().st_ino for p in split_scp(scp, 3, tmp_path / "log")] == inodes
    scp.write_text("".join(f"u{i} a.ark:{i}\n" for i in range(4)) + "u9 a.ark:9\n")
    again = split_scp(scp, 3, tmp_path / "log")
    assert [p.stat().st_ino == i for p, i in zip(again, inodes)] == [True, True, False]
    assert again[2].read_text() == "u3 a.ark:3\nu9 a.ark:9\n"
    assert split_scp(scp, 2, tmp_path / "log") == again[:2]
    assert sorted(p.name for p in (tmp_path / "log").iterdir()) == ["keys.1.scp", "keys.2.scp"]
