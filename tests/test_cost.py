"""Cost model: exact params / MACs against the real shrunk model, expected cost gradients."""

import random

import pytest
import torch
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
from torch.utils.flop_counter import FlopCounterMode

from conftest import CONF_VARIANTS, conf_variant
from espnet_prune.cost import counts_from_structure, encoder_cost, structure_cost
from espnet_prune.encoder import GatedConformerEncoder
from espnet_prune.structure import GRANULARITIES
from espnet_prune.pruned_encoder import PrunedConformerEncoder
from espnet_prune.structure import BlockStructure, ConformerDims

INPUT_SIZE = 20
SECONDS, FPS = 0.8, 100.0  # 80 input frames


def counted_macs(encoder, frames: int = int(SECONDS * FPS)) -> int:
    """Independent reference: torch's FLOP counter (matmuls and convs) / 2."""
    encoder.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoder(torch.randn(1, frames, INPUT_SIZE), torch.tensor([frames]))
    return counter.get_total_flops() // 2


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def random_structure(dims: ConformerDims, rng: random.Random):
    dense = dims.dense_block()
    out = []
    for _ in range(dims.num_blocks):
        sizes = {}
        for name in ("heads", "ffn1_units", "ffn2_units", "conv_channels"):
            full = getattr(dense, name)
            r = rng.random()
            sizes[name] = 0 if r < 0.2 or full == 0 else (full if r > 0.8 else rng.randint(1, full))
        out.append(BlockStructure(**sizes))
    return out


@pytest.mark.parametrize("variant", sorted(CONF_VARIANTS))
def test_dense_cost_equals_espnet_conformer(variant):
    conf = conf_variant(variant)
    enc = ConformerEncoder(INPUT_SIZE, **conf)
    dims = ConformerDims.from_encoder_conf(INPUT_SIZE, conf)
    cost = structure_cost(dims, dims.dense_structure(), SECONDS, FPS)
    assert cost["params"] == n_params(enc)
    assert cost["macs"] == counted_macs(enc)


@pytest.mark.parametrize("variant", sorted(CONF_VARIANTS))
def test_random_structures_exact_params_and_macs(variant):
    conf = conf_variant(variant)
    dims = ConformerDims.from_encoder_conf(INPUT_SIZE, conf)
    rng = random.Random(sum(map(ord, variant)))
    for trial in range(8):
        structure = random_structure(dims, rng)
        enc = PrunedConformerEncoder(
            INPUT_SIZE, block_structures=[s.to_dict() for s in structure], **conf
        )
        cost = structure_cost(dims, structure, SECONDS, FPS)
        assert cost["params"] == n_params(enc), (trial, structure)
        assert cost["macs"] == counted_macs(enc), (trial, structure)


def test_block_params_is_the_prunable_part(tiny_conf):
    dims = ConformerDims.from_encoder_conf(INPUT_SIZE, tiny_conf)
    enc = ConformerEncoder(INPUT_SIZE, **tiny_conf)
    cost = structure_cost(dims, dims.dense_structure())
    assert cost["block_params"] == sum(n_params(b) for b in enc.encoders)


BLOCK_GATES = [g for g in GRANULARITIES if g != "subsampling_channels"]  # front end: test_frontend.py


def test_expected_cost_equals_exact_cost_at_0_1_probabilities(tiny_conf):
    torch.manual_seed(0)
    enc = GatedConformerEncoder(INPUT_SIZE, gate_granularities=BLOCK_GATES, **tiny_conf)
    for p in enc.gate_parameters():  # saturate every gate at 0 or 1
        p.data.copy_(torch.where(torch.rand_like(p) < 0.3, -60.0, 60.0))
    enc.eval()
    expected = enc.expected_cost(SECONDS, FPS)
    exact = structure_cost(enc.dims, enc.structure(), SECONDS, FPS)
    for key in exact:  # closed gates keep P ~ 1e-27: the count itself, far within half a unit
        assert expected[key].item() == pytest.approx(exact[key], abs=0.5), key


def test_expected_cost_is_differentiable_and_monotone(tiny_conf):
    enc = GatedConformerEncoder(INPUT_SIZE, gate_granularities=BLOCK_GATES, **tiny_conf)
    cost = enc.expected_cost()
    cost["params"].backward()
    grads = torch.cat([p.grad for p in enc.gate_parameters()])
    assert (grads > 0).all()  # opening any gate can only add cost
    before = float(cost["macs"].detach())
    with torch.no_grad():
        for p in enc.gate_parameters():
            p -= 1.0
    assert float(enc.expected_cost()["macs"]) < before


def test_expected_counts_match_monte_carlo(tiny_conf):
    """E[units] (sum of scores) and E[present] (presence) of the groups that the
    expected cost is made of, against sampled masks of one block."""
    from espnet_prune.targets import CostContext

    torch.manual_seed(0)
    enc = GatedConformerEncoder(INPUT_SIZE, **tiny_conf)
    block = enc.encoders[0]
    for g in block.gates.values():
        g.log_alpha.data.normal_(0, 2)
    block.gates["mha"].log_alpha.data.fill_(0.0)
    block.gates["heads"].log_alpha.data.fill_(-2.5)  # so that "no head open" happens often
    groups, _ = enc.unit_groups("params", "blocks", CostContext())
    expected = {g.key[1]: g for g in groups if g.key[0] == 0}
    n = 4000
    units = torch.zeros(4)
    present = torch.zeros(4)
    names = ["ffn1", "mha", "conv", "ffn2"]
    with torch.no_grad():
        for _ in range(n):
            for j, name in enumerate(names):
                unit, whole = block.module_masks(name)
                on = (whole > 0).float()
                units[j] += on * (unit > 0).sum()
                present[j] += on * (unit > 0).any().float()
    for j, name in enumerate(names):
        assert units[j].item() / n == pytest.approx(float(expected[name].scores.sum()), rel=0.05, abs=0.05)
        assert present[j].item() / n == pytest.approx(float(expected[name].presence), abs=0.03)


def test_librispeech100_reference_numbers():
    """DESIGN 2.1: 8.82 G MACs at 10 s, 3.15 G of them in the front end."""
    import yaml
    from pathlib import Path

    conf = yaml.safe_load((Path(__file__).parents[1] / "conf/train_asr_conformer.yaml").read_text())
    dims = ConformerDims.from_encoder_conf(80, conf["encoder_conf"])
    cost = structure_cost(dims, dims.dense_structure(), 10.0, 100.0)
    assert round(cost["macs"] / 1e9, 2) == 8.82
    assert round((cost["macs"] - cost["block_macs"]) / 1e9, 2) == 3.15
    counts = counts_from_structure(dims.dense_block())
    assert encoder_cost(dims, [counts] * 12, 10.0)["params"] == cost["params"]
