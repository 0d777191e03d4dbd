"""PrunedTransformerDecoder against ESPnet's own TransformerDecoder (the independent reference).

Scores are compared with a tolerance of 1e-4 (observed differences are ~1e-6: the fast
path computes the same products in another order); hypotheses must be identical.
"""

from __future__ import annotations

import copy
import gc
import pickle
from typing import List, Optional

import numpy as np
import pytest
import torch

import conftest  # noqa: F401 - NLTK_DATA stub before ESPnet is imported
from conftest import assert_same_hyps, espnet_beam, zeroed_decoder_reference
from espnet.nets.batch_beam_search import BatchBeamSearch
from espnet.nets.beam_search import BeamSearch
from espnet.nets.pytorch_backend.nets_utils import make_pad_mask
from espnet.nets.pytorch_backend.transformer.embedding import ScaledPositionalEncoding
from espnet.nets.pytorch_backend.transformer.mask import subsequent_mask
from espnet2.asr.ctc import CTC
from espnet2.asr.decoder.transformer_decoder import TransformerDecoder
from espnet_prune import fast_decoder
from espnet_prune.cost import decoder_cost
from espnet_prune.decoder_layer import PrunedDecoderLayer, slice_decoder_layer
from espnet_prune.fast_decoder import DecoderState
from espnet_prune.pruned_decoder import PrunedTransformerDecoder
from espnet_prune.structure import DecoderDims, DecoderLayerStructure

V, D = 24, 16
EOS = V - 1
TOL = 1e-4
OPTS = dict(attention_heads=4, linear_units=24, num_blocks=3, dropout_rate=0.0,
            positional_dropout_rate=0.0, self_attention_dropout_rate=0.0,
            src_attention_dropout_rate=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def dense_reference(seed: int = 0, std: float = 0.5, **kw) -> TransformerDecoder:
    """ESPnet decoder with large random weights (peaky scores: no near-ties in the beam)."""
    torch.manual_seed(seed)
    opts = dict(OPTS, **kw)
    ref = TransformerDecoder(V, D, **opts).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.2)
            else:
                p.normal_(0.0, std)
    return ref


def fast_copy(ref: TransformerDecoder) -> PrunedTransformerDecoder:
    ours = PrunedTransformerDecoder.from_transformer_decoder(ref)
    assert type(ours) is PrunedTransformerDecoder and ours is not ref
    return ours


def close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> bool:
    return a.shape == b.shape and float((a - b).abs().max()) <= tol


# =============================================================================
# Dense decoder: checkpoints, teacher forcing, incremental steps
# =============================================================================


@pytest.mark.parametrize("variant", [
    {}, dict(normalize_before=False), dict(concat_after=True), dict(qk_norm=True),
    dict(input_layer="linear"), dict(use_output_layer=False),
    dict(pos_enc_class=ScaledPositionalEncoding),
])
def test_dense_state_dict_and_outputs_match_espnet(variant):
    ref = dense_reference(1, **variant)
    ours = PrunedTransformerDecoder(V, D, **dict(OPTS, **variant)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # every key matched
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert ours.dims.attention_heads == 4 and ours.kept_layers == [0, 1, 2]
    torch.manual_seed(2)
    mem, hlens = torch.randn(3, 11, D), torch.tensor([11, 7, 4])
    if variant.get("input_layer") == "linear":
        ys = torch.randn(3, 5, V)
    else:
        ys = torch.randint(0, V, (3, 5))
    ylens = torch.tensor([5, 3, 2])
    with torch.no_grad():
        a, la = ref(mem, hlens, ys, ylens)
        b, lb = ours(mem, hlens, ys, ylens)
    assert torch.equal(a, b) and torch.equal(la, lb)

    # incremental: forward_one_step (ESPnet cache), batch_score and score, step by step
    m = subsequent_mask(5).unsqueeze(0)
    with torch.no_grad():
        cache_r = cache_o = None
        st_r, st_o = [None] * 3, [None] * 3
        for t in range(1, 6):
            yr, cache_r = ref.forward_one_step(ys[:, :t], m[:, :t, :t], mem, cache=cache_r)
            yo, cache_o = ours.forward_one_step(ys[:, :t], m[:, :t, :t], mem, cache=cache_o)
            assert close(yr, yo) and all(close(x, y) for x, y in zip(cache_r, cache_o))
            linear = variant.get("input_layer") == "linear"  # ESPnet's score needs token ids
            sr = yr if linear else ref.batch_score(ys[:, :t], st_r, mem)[0]
            if not linear:
                st_r = ref.batch_score(ys[:, :t], st_r, mem)[1]
            so, st_o = ours.batch_score(ys[:, :t], st_o, mem)
            assert close(sr, so)
            assert all(isinstance(s, DecoderState) and s.length == t for s in st_o)
        s1, s2 = None, None
        for t in range(1, 6):
            if linear:
                a = ref.forward_one_step(ys[:1, :t], m[:, :t, :t], mem[:1])[0][0]
            else:
                a, s1 = ref.score(ys[0, :t], s1, mem[0])
            b, s2 = ours.score(ys[0, :t], s2, mem[0])
            assert a.shape == (V if ours.output_layer is not None else D,) and close(a, b)


def test_return_hs_matches_espnet():
    ref = dense_reference(3)
    ours = fast_copy(ref)
    mem = torch.randn(9, D)
    ys = torch.randint(0, V, (4, 3))
    with torch.no_grad():
        (lr, hr), _ = ref.batch_score(ys, [None] * 4, mem.expand(4, 9, D), return_hs=True)
        (lo, ho), _ = ours.batch_score(ys, [None] * 4, mem.expand(4, 9, D), return_hs=True)
        assert close(lr, lo) and close(hr, ho)
        lr, hr, _ = ref.score(ys[0], None, mem, return_hs=True)
        lo, ho, _ = ours.score(ys[0], None, mem, return_hs=True)
        assert close(lr, lo) and close(hr, ho) and hr.shape == ho.shape


def test_batch_score_several_distinct_memories_with_masks():
    """Several utterances in one call: one memory row per utterance, or per hypothesis."""
    ref = dense_reference(4)
    ours = fast_copy(ref)
    n_utt, n_hyp, t_max = 3, 2, 10
    torch.manual_seed(5)
    memory = torch.randn(n_utt, t_max, D)
    lens = torch.tensor([10, 6, 3])
    mask_utt = (~make_pad_mask(lens, maxlen=t_max)).unsqueeze(1)  # (U, 1, T)
    replicated = memory.repeat_interleave(n_hyp, dim=0)
    mask_hyp = mask_utt.repeat_interleave(n_hyp, dim=0)
    ys = torch.randint(0, V, (n_utt * n_hyp, 4))
    m = subsequent_mask(4).unsqueeze(0)
    with torch.no_grad():
        # reference: ESPnet's one-step forward on the replicated memory, with the mask
        cache = None
        refs = []
        for t in range(1, 5):
            y, cache = ref.forward_one_step(ys[:, :t], m[:, :t, :t], replicated, mask_hyp, cache=cache)
            refs.append(y)
        for mem, mask in ((replicated, mask_hyp), (memory, mask_utt), (memory, mask_hyp)):
            states = [None] * len(ys)
            for t in range(1, 5):
                out, states = ours.batch_score(ys[:, :t], states, mem, xs_mask=mask)
                assert close(out, refs[t - 1])
        # unmasked: ESPnet's batch_score on the replicated memory
        states_r, states_o = [None] * len(ys), [None] * len(ys)
        for t in range(1, 5):
            a, states_r = ref.batch_score(ys[:, :t], states_r, replicated)
            b, states_o = ours.batch_score(ys[:, :t], states_o, memory)
            assert close(a, b)


# =============================================================================
# ESPnet's beam searches: identical hypotheses and scores
# =============================================================================


def _beam(cls, dec, beam: int, ctc: Optional[CTC]):
    return espnet_beam(cls, dec, beam, V, ctc)


def _assert_same_hyps(ref_hyps, our_hyps):
    assert_same_hyps(ref_hyps, our_hyps, TOL)


@pytest.mark.parametrize("search", [BeamSearch, BatchBeamSearch])
@pytest.mark.parametrize("beam", [1, 5, 20])
@pytest.mark.parametrize("with_ctc", [False, True])
@pytest.mark.parametrize("frames,maxlenratio", [(8, 0.0), (120, 0.12)])
def test_beam_search_identical_to_espnet(search, beam, with_ctc, frames, maxlenratio):
    ref = dense_reference(6)
    ours = fast_copy(ref)
    ctc = None
    if with_ctc:
        torch.manual_seed(7)
        ctc = CTC(V, D).eval()
    torch.manual_seed(8 + frames)
    x = torch.randn(frames, D)
    with torch.no_grad():
        hr = _beam(search, ref, beam, ctc)(x, maxlenratio=maxlenratio, minlenratio=0.0)
        ho = _beam(search, ours, beam, ctc)(x, maxlenratio=maxlenratio, minlenratio=0.0)
    _assert_same_hyps(hr, ho)


def test_batch_beam_search_many_utterances_one_decoder():
    """Utterances decoded one after another by the same searcher (memory cache reused across
    utterances; a new encoder output may land at a freed one's address)."""
    ref = dense_reference(9)
    ours = fast_copy(ref)
    torch.manual_seed(10)
    ctc = CTC(V, D).eval()
    b_ref, b_ours = _beam(BatchBeamSearch, ref, 4, ctc), _beam(BatchBeamSearch, ours, 4, ctc)
    lengths = [12, 12, 30, 12, 7]
    with torch.no_grad():
        for i, t in enumerate(lengths):
            enc = torch.randn(2, t, D)  # a batch of 2 utterances, decoded one at a time
            for row in range(2):
                x = enc[row]
                _assert_same_hyps(b_ref(x, maxlenratio=0.0), b_ours(x, maxlenratio=0.0))
            del enc, x
            gc.collect()
        # same tensor, contents changed in place between utterances
        x = torch.randn(12, D)
        _assert_same_hyps(b_ref(x, maxlenratio=0.0), b_ours(x, maxlenratio=0.0))
        x.mul_(-1.5)
        _assert_same_hyps(b_ref(x, maxlenratio=0.0), b_ours(x, maxlenratio=0.0))


def test_beam_search_inference_mode_and_float64():
    ref = dense_reference(11).double()
    ours = fast_copy(ref)
    assert next(ours.parameters()).dtype == torch.float64
    with torch.inference_mode():
        for t in (9, 9, 15):  # inference tensors: no version counter, init_state resets
            x = torch.randn(t, D, dtype=torch.float64)
            hr = _beam(BatchBeamSearch, ref, 3, None).double()(x, maxlenratio=0.0)
            ho = _beam(BatchBeamSearch, ours, 3, None).double()(x, maxlenratio=0.0)
            _assert_same_hyps(hr, ho)


# =============================================================================
# The memory key/value cache (our versions of ESPnet's development-tree tests)
# =============================================================================


def _count_key_projections(dec, layer: int = 0) -> List[int]:
    seen: List[int] = []
    dec.decoders[layer].src_attn.linear_k.register_forward_hook(
        lambda m, inp, out: seen.append(inp[0].size(0)))
    return seen


def test_memory_projected_once_per_memory():
    ours = fast_copy(dense_reference(12))
    seen = _count_key_projections(ours)
    memory = torch.randn(3, 9, D)
    ys = torch.randint(0, V, (3, 2))
    with torch.no_grad():
        _, states = ours.batch_score(ys, [None] * 3, memory)
        assert len(seen) == 1
        ys3 = torch.cat([ys, ys[:, :1]], 1)
        _, states = ours.batch_score(ys3, states, memory)
        ours.batch_score(torch.cat([ys3, ys3[:, :1]], 1), states, memory)
        assert len(seen) == 1, "the same memory was projected again"
        # ESPnet's forward_one_step interface shares the cache
        ours.forward_one_step(ys, subsequent_mask(2).unsqueeze(0), memory)
        assert len(seen) == 1


def test_memory_cache_follows_changes_and_dies_with_the_tensor():
    ref = dense_reference(13)
    ours = fast_copy(ref)
    seen = _count_key_projections(ours)
    ys = torch.randint(0, V, (2, 2))
    memory = torch.randn(2, 9, D)
    with torch.no_grad():
        ours.batch_score(ys, [None] * 2, memory)
        memory.mul_(0.5)  # in place: the version counter moves
        out, _ = ours.batch_score(ys, [None] * 2, memory)
        assert len(seen) == 2
        assert close(out, ref.batch_score(ys, [None] * 2, memory)[0])
        other = memory.clone()  # same shape, another tensor
        ours.batch_score(ys, [None] * 2, other)
        assert len(seen) == 3
        del other
        gc.collect()
        assert ours.memory_cache.empty  # gone with its tensor
        # a new tensor at the address of a freed one is a new memory. Tensors made with
        # torch.from_numpy on one numpy buffer have the same address, offset, shape, stride
        # and version (0) but each has its own storage: the address is reused for certain.
        buf = np.random.default_rng(0).standard_normal((2, 9, D)).astype(np.float32)
        a = torch.from_numpy(buf)
        ours.batch_score(ys, [None] * 2, a)
        ptr = a.data_ptr()
        assert len(seen) == 4
        del a
        gc.collect()
        assert ours.memory_cache.empty  # forgotten when the storage was freed
        buf *= -2.0
        b = torch.from_numpy(buf)
        assert b.data_ptr() == ptr and b._version == 0
        out, _ = ours.batch_score(ys, [None] * 2, b)
        assert close(out, ref.batch_score(ys, [None] * 2, b)[0])
        assert len(seen) == 5
        # the storage, not the address, identifies the memory (even while the first lives)
        buf *= -0.5
        c = torch.from_numpy(buf)
        assert c.data_ptr() == ptr and c._version == b._version == 0
        out, _ = ours.batch_score(ys, [None] * 2, c)
        assert close(out, ref.batch_score(ys, [None] * 2, c)[0])
        assert len(seen) == 6
        # changed weights are changed keys and values
        ours.decoders[0].src_attn.linear_v.weight.mul_(2.0)
        ref.decoders[0].src_attn.linear_v.weight.mul_(2.0)
        out, _ = ours.batch_score(ys, [None] * 2, c)
        assert close(out, ref.batch_score(ys, [None] * 2, c)[0])
        # init_state (start of an utterance in ESPnet's searches) forgets the memory
        ours.init_state(c[0])
        assert ours.memory_cache.empty


def test_expanded_memory_is_projected_once_and_reused_as_the_beam_shrinks():
    ref = dense_reference(14)
    ours = fast_copy(ref)
    seen = _count_key_projections(ours)
    x = torch.randn(9, D)
    ys = torch.randint(0, V, (4, 2))
    with torch.no_grad():
        r, _ = ours.batch_score(ys, [None] * 4, x.unsqueeze(0).repeat(4, 1, 1))
        assert seen[-1] == 4  # four real copies: four rows projected
        out, _ = ours.batch_score(ys, [None] * 4, x.expand(4, 9, D))
        assert seen[-1] == 1, "a stride-0 memory should be projected once"
        assert close(out, r) and close(out, ref.batch_score(ys, [None] * 4, x.expand(4, 9, D))[0])
        n = len(seen)
        ours.batch_score(ys[:2], [None] * 2, x.expand(2, 9, D))
        ours.batch_score(ys[:1], [None], x.expand(1, 9, D))
        ours.score(ys[0], None, x)  # BeamSearch's per-hypothesis path
        ours.score(ys[1], None, x)
        assert len(seen) == n


def test_no_caching_under_autograd_and_gradients_match():
    ref = dense_reference(15)
    ours = fast_copy(ref)
    seen = _count_key_projections(ours)
    memory = torch.randn(2, 9, D, requires_grad=True)
    ys = torch.randint(0, V, (2, 3))
    out, _ = ours.batch_score(ys, [None] * 2, memory)
    out.sum().backward()
    g_ours = memory.grad.clone()
    memory.grad = None
    ref.batch_score(ys, [None] * 2, memory)[0].sum().backward()
    assert close(g_ours, memory.grad)
    ours.batch_score(ys, [None] * 2, memory)
    assert len(seen) == 2 and ours.memory_cache.empty


def test_decoder_with_live_cache_pickles_and_deep_copies():
    ours = fast_copy(dense_reference(16))
    mem = torch.randn(1, 5, D)
    with torch.no_grad():
        ours.batch_score(torch.zeros(1, 1, dtype=torch.long), [None], mem)
    assert ours.memory_cache.empty is False
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert clone.memory_cache.empty
        assert all(torch.equal(a, b) for a, b in zip(clone.state_dict().values(),
                                                      ours.state_dict().values()))


def test_espnet_native_cache_is_used_when_espnet_has_it(monkeypatch):
    """With an ESPnet that caches the memory itself, dense layers run ESPnet's decoding."""
    assert fast_decoder.espnet_caches_memory_kv() is False  # released 202511: it does not
    ref = dense_reference(17)
    monkeypatch.setattr(fast_decoder, "espnet_caches_memory_kv", lambda: True)
    ours = fast_copy(ref)
    seen = _count_key_projections(ours)
    mem = torch.randn(9, D).expand(3, 9, D)
    ys = torch.randint(0, V, (3, 2))
    with torch.no_grad():
        out, states = ours.batch_score(ys, [None] * 3, mem)
    assert seen == [3]  # ESPnet's own code (here: 202511, which projects every row)
    assert isinstance(states[0], list) and close(out, ref.batch_score(ys, [None] * 3, mem)[0])
    # pruned layers always use ours
    pruned = PrunedTransformerDecoder(V, D, layer_structures=[
        dict(self_heads=2, src_heads=4, ffn_units=10)] * 3, **OPTS).eval()
    with torch.no_grad():
        _, states = pruned.batch_score(ys, [None] * 3, mem)
    assert isinstance(states[0], DecoderState)


# =============================================================================
# Pruned structures against ESPnet's dense decoder with the removed parts zeroed
# =============================================================================


def _random_plan(seed: int, num_blocks: int, remove_layer: Optional[int] = None):
    """Random kept indices per layer and sublayer; some sublayers and one layer removed."""
    g = torch.Generator().manual_seed(seed)
    plan = []
    for i in range(num_blocks):
        entry = {}
        for name, n in (("self_attn", 4), ("src_attn", 4), ("ffn", 24)):
            k = int(torch.randint(0, n + 1, (1,), generator=g))
            if i == remove_layer:
                k = 0
            entry[name] = torch.randperm(n, generator=g)[:k].sort().values
        plan.append(entry)
    return plan


def _pruned_pair(seed: int, remove_layer: Optional[int], **variant):
    dense = dense_reference(seed, **variant)
    plan = _random_plan(seed, 3, remove_layer)
    structures = [dict(self_heads=len(p["self_attn"]), src_heads=len(p["src_attn"]),
                       ffn_units=len(p["ffn"])) for p in plan]
    ours = PrunedTransformerDecoder(V, D, layer_structures=structures, **dict(OPTS, **variant)).eval()
    kept = [i for i, s in enumerate(structures) if any(s.values())]
    assert ours.kept_layers == kept and len(ours.decoders) == len(kept)
    # weights: slice the dense layers; the structure built from the config must hold them
    sliced = copy.deepcopy(dense)
    sliced.decoders = torch.nn.ModuleList(
        [slice_decoder_layer(dense.decoders[i], plan[i]["self_attn"], plan[i]["src_attn"],
                             plan[i]["ffn"]) for i in kept])
    ours.load_state_dict(sliced.state_dict(), strict=True)
    assert [s.to_dict() for s in ours.structure()] == structures

    # reference: ESPnet's decoder, removed heads / units zeroed, removed sublayers skipped
    ref = zeroed_decoder_reference(dense, plan)
    return ref, ours, plan


@pytest.mark.parametrize("seed,remove_layer,variant", [
    (20, None, {}), (21, 1, {}), (22, 0, dict(normalize_before=False)),
    (23, 2, dict(concat_after=True)), (24, None, dict(qk_norm=True)),
])
def test_random_structure_equals_zeroed_espnet_decoder(seed, remove_layer, variant):
    ref, ours, plan = _pruned_pair(seed, remove_layer, **variant)
    torch.manual_seed(seed)
    mem, hlens = torch.randn(2, 13, D), torch.tensor([13, 8])
    ys, ylens = torch.randint(0, V, (2, 6)), torch.tensor([6, 4])
    with torch.no_grad():
        a, _ = ref(mem, hlens, ys, ylens)
        b, _ = ours(mem, hlens, ys, ylens)
        assert close(a, b)
        # incremental: ESPnet's own step on the reference, our fast step, our ESPnet-style step
        m = subsequent_mask(6).unsqueeze(0)
        st_r, st_o, cache_r, cache_o = [None] * 2, [None] * 2, None, None
        for t in range(1, 7):
            sr, st_r = ref.batch_score(ys[:, :t], st_r, mem)
            so, st_o = ours.batch_score(ys[:, :t], st_o, mem)
            assert close(sr, so)
            yr, cache_r = ref.forward_one_step(ys[:, :t], m[:, :t, :t], mem, cache=cache_r)
            yo, cache_o = ours.forward_one_step(ys[:, :t], m[:, :t, :t], mem, cache=cache_o)
            assert close(yr, yo)
            # pruned layers' own forward with an ESPnet cache
            if t > 1:
                x = ours.embed(ys[:, :t])
                for j, layer in enumerate(ours.decoders):
                    full, *_ = layer(x, m[:, :t, :t], mem, None)
                    step, *_ = layer(x, m[:, :t, :t], mem, None, cache=full[:, :-1])
                    assert close(full, step)
                    x = full
        torch.manual_seed(seed + 1)
        ctc = CTC(V, D).eval()
        x = torch.randn(20, D)
        for search in (BatchBeamSearch, BeamSearch):
            hr = _beam(search, ref, 5, ctc)(x, maxlenratio=0.0)
            ho = _beam(search, ours, 5, ctc)(x, maxlenratio=0.0)
            _assert_same_hyps(hr, ho)


def test_everything_removed_is_embedding_and_output_only():
    dense = dense_reference(25)
    zeros = [dict(self_heads=0, src_heads=0, ffn_units=0)] * 3
    ours = PrunedTransformerDecoder(V, D, layer_structures=zeros, **OPTS).eval()
    assert len(ours.decoders) == 0 and ours.kept_layers == []
    state = {k: v for k, v in dense.state_dict().items() if not k.startswith("decoders.")}
    ours.load_state_dict(state, strict=True)
    ys = torch.randint(0, V, (2, 4))
    mem = torch.randn(2, 7, D)
    with torch.no_grad():
        expected = torch.log_softmax(dense.output_layer(dense.after_norm(dense.embed(ys)[:, -1])), -1)
        out, states = ours.batch_score(ys, [None] * 2, mem)
        assert close(out, expected)
        out2, _ = ours.batch_score(torch.cat([ys, ys[:, :1]], 1), states, mem)
        a, _ = ours(mem, torch.tensor([7, 7]), ys, torch.tensor([4, 4]))
        assert close(a[:, -1], dense.output_layer(dense.after_norm(dense.embed(ys)[:, -1])))


@pytest.mark.parametrize("concat_after", [False, True])
def test_slice_folds_unit_and_sublayer_scales(concat_after):
    dense = dense_reference(26, concat_after=concat_after)
    layer = dense.decoders[1]
    g = torch.Generator().manual_seed(0)
    keep = {"self_attn": torch.tensor([0, 2, 3]), "src_attn": torch.tensor([1]),
            "ffn": torch.tensor([0, 3, 5, 7, 20])}
    unit = {k: torch.rand(len(v), generator=g) + 0.5 for k, v in keep.items()}
    whole = {k: torch.rand((), generator=g) + 0.5 for k in keep}
    new = slice_decoder_layer(layer, keep["self_attn"], keep["src_attn"], keep["ffn"],
                              self_head_scale=unit["self_attn"], src_head_scale=unit["src_attn"],
                              ffn_unit_scale=unit["ffn"], self_scale=whole["self_attn"],
                              src_scale=whole["src_attn"], ffn_scale=whole["ffn"])
    assert isinstance(new, PrunedDecoderLayer)
    assert new.structure() == DecoderLayerStructure(3, 1, 5)
    # reference: the dense layer with hooks (input masks and output scales), ESPnet's forward
    ref = copy.deepcopy(layer)
    for name, attr, concat in (("self_attn", "self_attn", "concat_linear1"),
                               ("src_attn", "src_attn", "concat_linear2"),
                               ("ffn", "feed_forward", None)):
        module = getattr(ref, attr)
        n, inner = (24, module.w_2) if name == "ffn" else (4, module.linear_out)
        per_unit = torch.zeros(n)
        per_unit[keep[name]] = unit[name]
        cols = per_unit if name == "ffn" else per_unit.repeat_interleave(D // 4)
        inner.register_forward_pre_hook(lambda m, inp, c=cols: (inp[0] * c,))
        target = getattr(ref, concat) if concat_after and concat else module
        target.register_forward_hook(lambda m, inp, out, s=whole[name]: out * s)
    torch.manual_seed(1)
    x, mem = torch.randn(2, 5, D), torch.randn(2, 8, D)
    mask = subsequent_mask(5).unsqueeze(0)
    with torch.no_grad():
        a, *_ = ref(x, mask, mem, None)
        b, *_ = new(x, mask, mem, None)
    assert close(a, b)
    assert layer.self_attn.h == 4 and layer.feed_forward.w_1.out_features == 24  # untouched


# =============================================================================
# Structures, configs, errors
# =============================================================================


def test_structure_round_trip_and_errors_name_the_key():
    s = DecoderLayerStructure.from_dict({"self_heads": 2, "src_heads": 0, "ffn_units": 10})
    assert DecoderLayerStructure.from_dict(s.to_dict()) == s and not s.removed
    assert DecoderLayerStructure(0, 0, 0).removed
    with pytest.raises(ValueError, match=r"decoder_conf.layer_structures\[1\].*missing \['ffn_units'\]"):
        PrunedTransformerDecoder(V, D, layer_structures=[
            dict(self_heads=1, src_heads=1, ffn_units=1), dict(self_heads=1, src_heads=1)] + [
            dict(self_heads=1, src_heads=1, ffn_units=1)], **OPTS)
    with pytest.raises(ValueError, match=r"layer_structures\[0\].*unknown \['heads'\]"):
        PrunedTransformerDecoder(V, D, layer_structures=[
            dict(self_heads=1, src_heads=1, ffn_units=1, heads=2)] * 3, **OPTS)
    with pytest.raises(ValueError, match=r"layer_structures\[2\].src_heads=5 exceeds the dense size 4"):
        PrunedTransformerDecoder(V, D, layer_structures=[
            dict(self_heads=1, src_heads=1, ffn_units=1)] * 2 + [
            dict(self_heads=1, src_heads=5, ffn_units=1)], **OPTS)
    with pytest.raises(ValueError, match=r"layer_structures\[0\]: negative sizes for \['ffn_units'\]"):
        PrunedTransformerDecoder(V, D, layer_structures=[
            dict(self_heads=1, src_heads=1, ffn_units=-1)] * 3, **OPTS)
    with pytest.raises(ValueError, match=r"layer_structures\[0\].self_heads: expected a whole number"):
        PrunedTransformerDecoder(V, D, layer_structures=[
            dict(self_heads=1.5, src_heads=1, ffn_units=1)] * 3, **OPTS)
    with pytest.raises(ValueError, match=r"layer_structures has 2 entries but num_blocks is 3"):
        PrunedTransformerDecoder(V, D, layer_structures=[
            dict(self_heads=1, src_heads=1, ffn_units=1)] * 2, **OPTS)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['attention_head'\]"):
        PrunedTransformerDecoder(V, D, attention_head=2)


def test_from_transformer_decoder_checks_every_key():
    from espnet2.asr.decoder.rnn_decoder import RNNDecoder

    with pytest.raises(TypeError, match="RNNDecoder"):
        PrunedTransformerDecoder.from_transformer_decoder(RNNDecoder(V, D))
    ref = dense_reference(27)
    ref.register_buffer("extra", torch.zeros(1))  # a key the rebuilt decoder does not have
    with pytest.raises(ValueError, match="unexpected.*extra"):
        PrunedTransformerDecoder.from_transformer_decoder(ref)
    del ref.extra
    rng_before = torch.get_rng_state()
    ours = PrunedTransformerDecoder.from_transformer_decoder(ref)
    assert torch.equal(torch.get_rng_state(), rng_before)  # building it draws no random numbers
    assert not ours.training and PrunedTransformerDecoder.from_transformer_decoder(ours) is ours


# =============================================================================
# Cost model against numel and torch's FLOP counter
# =============================================================================


@pytest.mark.parametrize("variant", [
    {}, dict(concat_after=True, normalize_before=False), dict(qk_norm=True),
    dict(input_layer="linear", pos_enc_class=ScaledPositionalEncoding),
    dict(use_output_layer=False),
])
def test_cost_is_exact(variant):
    from espnet_prune.flops import count_decoder_macs

    g = torch.Generator().manual_seed(len(variant))
    for trial in range(3):
        structures = []
        for i in range(3):
            s = [int(torch.randint(0, n + 1, (1,), generator=g)) for n in (4, 4, 24)]
            if trial == 2 and i == 1:
                s = [0, 0, 0]
            structures.append(dict(self_heads=s[0], src_heads=s[1], ffn_units=s[2]))
        if trial == 0:
            structures = None
        dec = PrunedTransformerDecoder(V, D, layer_structures=structures, **dict(OPTS, **variant))
        dims = DecoderDims.from_decoder_conf(V, D, dict(OPTS, **variant))
        assert dec.dims == dims
        for prefix_len, frames in ((1, 5), (7, 19)):
            cost = decoder_cost(dims, dec.structure(), prefix_len, frames, tokens=prefix_len)
            assert cost == dec.cost(prefix_len, frames, tokens=prefix_len)
            assert cost["params"] == sum(p.numel() for p in dec.parameters())
            assert cost["layer_params"] == sum(p.numel() for p in dec.decoders.parameters())
            counted = count_decoder_macs(dec, prefix_len, frames)
            assert cost["token_macs"] == counted["token_macs"]
            assert cost["memory_macs"] == counted["memory_macs"]
        # a whole greedy decode of 4 tokens, counted by torch
        from torch.utils.flop_counter import FlopCounterMode

        dec.eval()
        mem = torch.randn(6, D)
        ys = torch.randint(0, V, (4,)) if dims.input_layer == "embed" else torch.randn(4, V)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            dec.init_state(mem)
            state = None
            for t in range(1, 5):
                _, state = dec.score(ys[:t], state, mem)
        assert decoder_cost(dims, dec.structure(), 1, 6, tokens=4)["utterance_macs"] == \
            counter.get_total_flops() // 2


def test_expected_cost_with_probabilities_is_differentiable():
    from espnet_prune.cost import DecoderLayerCounts

    dims = DecoderDims(V, D, 4, 24, 2)
    p = torch.tensor([0.5, 0.8], requires_grad=True)
    counts = [DecoderLayerCounts(4 * p[0], 2 * p[1], 24 * p[0], p[0], p[1], p[0]),
              DecoderLayerCounts(4, 4, 24, 1, 1, 1)]
    cost = decoder_cost(dims, counts, 10, 20)
    cost["params"].backward()
    assert p.grad is not None and torch.all(p.grad > 0)
    full = decoder_cost(dims, dims.dense_structure(), 10, 20)
    ones = [DecoderLayerCounts(4, 4, 24, 1, 1, 1)] * 2
    assert decoder_cost(dims, ones, 10, 20) == full


def test_print_config_shows_every_transformer_option():
    """ESPnet's --print_config reads the class signature: ours lists TransformerDecoder's too."""
    from espnet2.utils.get_default_kwargs import get_default_kwargs

    dense = get_default_kwargs(TransformerDecoder)
    ours = get_default_kwargs(PrunedTransformerDecoder)
    assert {k: ours[k] for k in dense} == dense and ours["layer_structures"] is None


def test_slicing_a_subclass_leaves_its_extra_state_behind():
    """A gated layer (a DecoderLayer subclass with more parameters) shrinks to a plain one."""
    from espnet.nets.pytorch_backend.transformer.decoder_layer import DecoderLayer

    class GatedLayer(DecoderLayer):
        pass

    layer = dense_reference(28).decoders[0]
    gated = copy.deepcopy(layer)
    gated.__class__ = GatedLayer
    gated.gate_log_alpha = torch.nn.Parameter(torch.zeros(4))
    new = slice_decoder_layer(gated, torch.tensor([1, 2]), None, torch.tensor([], dtype=torch.long))
    assert type(new) is PrunedDecoderLayer and "gate_log_alpha" not in new.state_dict()
    assert sorted(new.state_dict()) == sorted(
        k for k in layer.state_dict() if not k.startswith(("feed_forward", "norm3")))
    assert new.feed_forward is None and new.src_attn.h == 4 and new.self_attn.h == 2


def test_dense_or_removed_layers_are_an_espnet_decoder_with_fewer_blocks():
    dense, removed = dict(self_heads=4, src_heads=4, ffn_units=24), dict(self_heads=0, src_heads=0, ffn_units=0)
    ours = PrunedTransformerDecoder(V, D, layer_structures=[removed, dense, removed], **OPTS).eval()
    assert ours.kept_layers == [1]
    ref = dense_reference(29, num_blocks=1)
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert [s.removed for s in ours.structure()] == [True, False, True]
    mem, ys = torch.randn(2, 7, D), torch.randint(0, V, (2, 3))
    with torch.no_grad():
        assert close(ours.batch_score(ys, [None] * 2, mem)[0], ref.batch_score(ys, [None] * 2, mem)[0])


def test_batch_score_with_states_from_different_batches_and_rows():
    """States gathered from several earlier calls, reordered and repeated, as a search may."""
    ref = dense_reference(30)
    ours = fast_copy(ref)
    mem = torch.randn(11, D)
    ys_a, ys_b = torch.randint(0, V, (2, 3)), torch.randint(0, V, (3, 3))
    with torch.no_grad():
        _, ra = ref.batch_score(ys_a, [None] * 2, mem.expand(2, 11, D))
        _, oa = ours.batch_score(ys_a, [None] * 2, mem.expand(2, 11, D))
        _, rb = ref.batch_score(ys_b, [None] * 3, mem.expand(3, 11, D))
        _, ob = ours.batch_score(ys_b, [None] * 3, mem.expand(3, 11, D))
        picks = [("a", 1), ("b", 2), ("a", 0), ("b", 2)]
        ys = {"a": ys_a, "b": ys_b}
        nxt = torch.randint(0, V, (4, 1))
        ys4 = torch.cat([torch.stack([ys[s][i] for s, i in picks]), nxt], 1)
        st_r = [{"a": ra, "b": rb}[s][i] for s, i in picks]
        st_o = [{"a": oa, "b": ob}[s][i] for s, i in picks]
        a, _ = ref.batch_score(ys4, st_r, mem.expand(4, 11, D))
        b, _ = ours.batch_score(ys4, st_o, mem.expand(4, 11, D))
        assert close(a, b)
        # rows of one batch, reordered and repeated (the usual beam-search case)
        order = [2, 0, 0, 1]
        ys4 = torch.cat([ys_b[order], nxt], 1)
        a, _ = ref.batch_score(ys4, [rb[i] for i in order], mem.expand(4, 11, D))
        b, st = ours.batch_score(ys4, [ob[i] for i in order], mem.expand(4, 11, D))
        assert close(a, b) and [s.row for s in st] == [0, 1, 2, 3]
        # a per-hypothesis state (BeamSearch's score) continues in batch_score, and back
        # (ESPnet's own states do not mix like this: the reference starts from scratch)
        _, s2 = ours.score(ys_a[0], None, mem)
        ys2 = torch.cat([ys_a[:1], nxt[:1]], 1)
        b, so = ours.batch_score(ys2, [s2], mem.expand(1, 11, D))
        assert close(ref.batch_score(ys2, [None], mem.expand(1, 11, D))[0], b)
        ys3 = torch.cat([ys2[0], nxt[1]])
        assert close(ref.score(ys3, None, mem)[0], ours.score(ys3, so[0], mem)[0])
    with pytest.raises(TypeError, match="forward_one_step caches are not states"):
        ours.batch_score(ys4, [rb[i] for i in order], mem.expand(4, 11, D))


def test_slicing_after_a_forward_under_autograd():
    """ESPnet keeps the last attention weights (non-leaf tensors) on the module: not copied."""
    dense = dense_reference(31)
    layer = dense.decoders[0]
    x, mem = torch.randn(1, 3, D, requires_grad=True), torch.randn(1, 5, D)
    layer(x, subsequent_mask(3).unsqueeze(0), mem, None)[0].sum().backward()
    assert layer.self_attn.attn is not None and layer.self_attn.attn.grad_fn is not None
    new = slice_decoder_layer(layer, torch.tensor([0, 1]), torch.tensor([3]), None)
    assert new.self_attn.attn is None and new.src_attn.attn is None
    assert layer.self_attn.attn is not None  # the original is untouched


def test_espnet_algorithm_on_pruned_layers_for_comparisons():
    """``use_fast_decoding = False``: ESPnet's step (memory re-projected every step), same result."""
    ref, ours, _ = _pruned_pair(32, 1)
    slow = copy.deepcopy(ours)
    slow.use_fast_decoding = False
    seen = _count_key_projections(slow)
    torch.manual_seed(33)
    ctc = CTC(V, D).eval()
    x = torch.randn(15, D)
    with torch.no_grad():
        for search in (BatchBeamSearch, BeamSearch):
            hr = _beam(search, ref, 4, ctc)(x, maxlenratio=0.0)
            _assert_same_hyps(hr, _beam(search, ours, 4, ctc)(x, maxlenratio=0.0))
            n = len(seen)
            _assert_same_hyps(hr, _beam(search, slow, 4, ctc)(x, maxlenratio=0.0))
            assert len(seen) - n > 5  # one projection per step (and hypothesis), as ESPnet
