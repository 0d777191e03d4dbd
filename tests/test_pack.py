"""Export: ``python -m espnet_prune.bin.pack`` archives load with ESPnet's ``Speech2Text``.

A tiny gated model (random weights and gates, global-MVN statistics file) is shrunk
and packed; the sources are then deleted, so the archive must hold everything. The
unpacked model must decode exactly like the original files (text and beam score),
with char tokens and with a sentencepiece BPE model trained here.
"""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
import yaml

from conftest import conf_variant, random_gated_asr, write_asr_config
from espnet_prune.bin import pack
from espnet_prune.model_io import save_asr_model
from espnet_prune.shrink import shrink_asr_model

N_MELS = 20


def _stats_file(path: Path, seed: int = 0) -> Path:
    """ESPnet's feats_stats.npz (count, sum, sum_square) for 20 mel bins."""
    rng = np.random.default_rng(seed)
    count = 1000
    mean = rng.normal(0.0, 1.0, N_MELS)
    var = rng.uniform(0.5, 2.0, N_MELS)
    np.savez(path, count=np.array(count), sum=mean * count, sum_square=(var + mean ** 2) * count)
    return path


def _waves(n: int = 3):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        t = np.arange(int(16000 * (0.6 + 0.2 * i))) / 16000
        x = 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t) + 0.05 * rng.standard_normal(t.size)
        out.append(torch.tensor(x, dtype=torch.float32))
    return out


def _decode(speech2text, waves):
    results = []
    for w in waves:
        nbest = speech2text(w)
        text, _, token_int, hyp = nbest[0]
        results.append((text, list(token_int), float(hyp.score)))
    return results


def _speech2text(**files):
    from espnet2.bin.asr_inference import Speech2Text

    return Speech2Text.from_pretrained(**files, device="cpu", beam_size=3, ctc_weight=0.3,
                                       maxlenratio=0.0, nbest=1)


@pytest.fixture
def shrunk_model(tmp_path, monkeypatch, one_thread):
    """tmp_path/shrunk/{config.yaml,model.pth} and tmp_path/feats_stats.npz, with cwd = tmp_path."""
    monkeypatch.chdir(tmp_path)
    stats = _stats_file(tmp_path / "feats_stats.npz")
    config = write_asr_config(tmp_path / "gated.yaml", "gated_conformer", conf_variant("latest_rel_macaron"))
    conf = yaml.safe_load(config.read_text())
    conf.update(normalize="global_mvn", normalize_conf={"stats_file": "feats_stats.npz"})
    config.write_text(yaml.safe_dump(conf))
    model, args = random_gated_asr(config)
    shrunk, shrunk_args = shrink_asr_model(model, args)
    save_asr_model(tmp_path / "shrunk", shrunk, shrunk_args)
    save_asr_model(tmp_path / "gated", model, args)
    assert stats.is_file()
    return tmp_path


def test_packed_shrunk_model_decodes_like_the_original(shrunk_model):
    root = shrunk_model
    out = pack.main(["--asr_train_config", "shrunk/config.yaml", "--asr_model_file", "shrunk/model.pth",
                     "--outpath", "export/pruned.zip"])
    assert out == Path("export/pruned.zip") and out.is_file()
    assert [p.name for p in (root / "export").iterdir()] == ["pruned.zip"]  # no temp left
    waves = _waves()
    reference = _decode(_speech2text(asr_train_config="shrunk/config.yaml", asr_model_file="shrunk/model.pth"),
                        waves)
    assert any(text for text, _, _ in reference)  # random weights still emit tokens

    # the archive alone: move it away and delete everything it was made from
    archive = shutil.move(str(out), str(root / "shared.zip"))
    shutil.rmtree(root / "shrunk")
    (root / "feats_stats.npz").unlink()
    from espnet2.main_funcs.pack_funcs import unpack

    files = unpack(archive, root / "unpacked")
    assert set(files) == {"asr_train_config", "asr_model_file"}
    unpacked_conf = yaml.safe_load(Path(files["asr_train_config"]).read_text())
    assert unpacked_conf["encoder"] == "pruned_conformer"
    assert Path(unpacked_conf["normalize_conf"]["stats_file"]).is_file()  # rewritten into unpacked/
    assert _decode(_speech2text(**files), waves) == reference


def test_pack_refuses_training_model_and_missing_files(shrunk_model):
    with pytest.raises(ValueError, match="model: prune_espnet is a training model.*espnet_prune.bin.shrink"):
        cfg = yaml.safe_load(Path("gated/config.yaml").read_text())
        cfg.update(model="prune_espnet")
        Path("gated/config.yaml").write_text(yaml.safe_dump(cfg))
        pack.main(["--asr_train_config", "gated/config.yaml", "--asr_model_file", "gated/model.pth",
                   "--outpath", "gated.zip"])
    Path("feats_stats.npz").unlink()
    with pytest.raises(FileNotFoundError, match="normalize_conf.stats_file: file not found: feats_stats.npz"):
        pack.main(["--asr_train_config", "shrunk/config.yaml", "--asr_model_file", "shrunk/model.pth",
                   "--outpath", "out.zip"])
    assert not Path("out.zip").exists() and not Path("gated.zip").exists()


def _bpe_model(path: Path) -> List[str]:
    """Train a sentencepiece BPE model of 6 pieces (offline, from a few sentences) into
    ``path``; return its ESPnet token list: 9 tokens, as many as the fixture's char list."""
    import sentencepiece as spm

    text = ["AB BA ABA", "BAB AB", "ABAB BA", "A B AB", "BA AB ABB"]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=model, vocab_size=7,
                                   model_type="bpe", character_coverage=1.0, bos_id=-1, eos_id=-1,
                                   minloglevel=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(path))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not sp.is_unknown(i)]
    assert any(len(p.lstrip("\u2581")) > 1 for p in pieces)  # real merges, not characters
    return ["<blank>", "<unk>", *pieces, "<sos/eos>"]


def test_packed_bpe_model_holds_its_bpemodel_and_decodes_like_the_original(shrunk_model):
    """The shrunk model's weights with a BPE token list of the same size: the archive must
    carry ``bpemodel`` (token_type bpe) and point the unpacked config at its copy."""
    import sentencepiece as spm

    root = shrunk_model
    bpe = root / "data/bpe.model"
    conf = yaml.safe_load(Path("shrunk/config.yaml").read_text())
    token_list = _bpe_model(bpe)
    assert len(token_list) == len(conf["token_list"])
    conf.update(token_type="bpe", bpemodel="data/bpe.model", token_list=token_list)
    Path("shrunk/config.yaml").write_text(yaml.safe_dump(conf))
    waves = _waves(2)
    reference = _decode(_speech2text(asr_train_config="shrunk/config.yaml", asr_model_file="shrunk/model.pth"),
                        waves)
    # the text is the BPE model's detokenisation of the tokens (no word-boundary marks left)
    sp = spm.SentencePieceProcessor(model_file=str(bpe))
    assert any(any("\u2581" in token_list[i] for i in ids) for _, ids, _ in reference)
    assert [text for text, _, _ in reference] == [sp.decode_pieces([token_list[i] for i in ids])
                                                   for _, ids, _ in reference]

    out = pack.main(["--asr_train_config", "shrunk/config.yaml", "--asr_model_file", "shrunk/model.pth",
                     "--outpath", "bpe.zip"])
    with zipfile.ZipFile(out) as zf:
        assert zf.read("data/bpe.model") == bpe.read_bytes()  # at the path the config names
    archive = shutil.move(str(out), str(root / "shared.zip"))
    for gone in ("shrunk", "data"):
        shutil.rmtree(root / gone)
    (root / "feats_stats.npz").unlink()
    from espnet2.main_funcs.pack_funcs import unpack

    files = unpack(archive, root / "unpacked")
    unpacked_conf = yaml.safe_load(Path(files["asr_train_config"]).read_text())
    assert Path(unpacked_conf["bpemodel"]) == root / "unpacked/data/bpe.model"
    assert Path(unpacked_conf["bpemodel"]).is_file()
    assert _decode(_speech2text(**files), waves) == reference
