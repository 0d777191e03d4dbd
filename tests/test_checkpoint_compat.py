"""Models written before the decoder moved out of ``espnet_prune/decoder.py`` still load.

``tests/data/checkpoints_100972e`` was written by espnet_prune at commit 100972e: a tiny
gated model (``gated_conformer`` + ``gated_transformer``, random gates) and the model its
shrinker made (``pruned_conformer`` + ``pruned_transformer``), with their encoder outputs
and first decoder scores on fixed inputs (``outputs.npz``).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

import conftest  # noqa: F401 - NLTK_DATA stub before ESPnet is imported
from espnet_prune.model_io import build_asr_model

OLD = Path(__file__).parent / "data" / "checkpoints_100972e"


@pytest.fixture(scope="module")
def models():
    import espnet_prune

    espnet_prune.register()
    out = {}
    for name in ("gated", "shrunk"):
        model, args = build_asr_model(OLD / name / "config.yaml", OLD / name / "model.pth")
        out[name] = (model.eval(), args)
    return out


@pytest.mark.parametrize("name", ["gated", "shrunk"])
def test_old_checkpoint_loads_and_computes_what_it_did(models, name, one_thread):
    ref = np.load(OLD / "outputs.npz")
    model, _ = models[name]
    x = torch.from_numpy(ref["feats"])
    with torch.no_grad():
        enc, _ = model.encode(x, torch.tensor([x.size(1)]))
        logp, _ = model.decoder.score(torch.from_numpy(ref["prefix"]), None, enc[0])
    # float32 sums over 16-32 terms: CPUs may round differently, far below 1e-4
    np.testing.assert_allclose(enc[0].numpy(), ref[f"{name}_encoder_out"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(logp.numpy(), ref[f"{name}_decoder_logp"], atol=1e-4, rtol=0)


def test_old_gated_checkpoint_shrinks_to_the_old_shrunk_model(models):
    from espnet_prune.shrink import shrink_asr_model

    gated, args = models["gated"]
    shrunk_old, args_old = models["shrunk"]
    shrunk, args_new = shrink_asr_model(gated, args)
    assert args_new.encoder == args_old.encoder and args_new.decoder == args_old.decoder
    assert args_new.encoder_conf == args_old.encoder_conf
    assert args_new.decoder_conf == args_old.decoder_conf
    new_state, old_state = shrunk.state_dict(), shrunk_old.state_dict()
    assert new_state.keys() == old_state.keys()
    for k in old_state:  # slicing copies, folding multiplies elementwise: exact
        assert torch.equal(new_state[k], old_state[k]), k
