"""Whole-model pruning pays end to end: a uniform half-size LibriSpeech-100 model against the dense one.

    python benchmarks/whole_model_speed.py                  # the full table (several minutes)
    python benchmarks/whole_model_speed.py --threads 1 --seconds 10 --beams 20

Both models are the LibriSpeech-100 Conformer (``conf/train_asr_conformer.yaml``) with
random weights; the pruned one keeps half of every prunable size, uniformly: front-end
conv channels, heads, FFN units and conv channels of every block, self/source heads and
FFN units of every decoder layer (``pruned_conformer`` + ``pruned_transformer``, built from
their YAML options as the shrinker writes them). Both decode with the fast exact decoder
(:mod:`espnet_prune.fast_decoder`) through ESPnet's ``BatchBeamSearch`` with CTC 0.3, a fixed
number of output tokens (see ``decode_speed.py``). Printed, all from one run with the two
models interleaved: params ratio, encoder MACs ratio, inference MACs ratio (encoder + CTC +
decoder for the decoded tokens, :mod:`espnet_prune.targets` convention), encoder latency
ratio (median of 5) and whole-decode time ratio, per thread count / audio length / beam.
Both decode on our path (``espnet_prune.fast_decoding``'s: fast decoder,
:class:`~espnet_prune.ctc_prefix.FastCTCPrefixScorer`,
:class:`~espnet_prune.batch_search.FastBatchBeamSearch`); the dense model also decodes with
stock ESPnet 202511 (its ``TransformerDecoder``, ``CTCPrefixScorer`` and ``BatchBeamSearch``),
and ``half / stock`` is the half-size model on our path against that stock dense decode (the
issue's bar at 10 s, beam 20: <= 0.10).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import List

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def half_structure_args(args):
    """Training args of the uniform half-size pruned model."""
    from espnet_prune.bin.latency import structure_args
    from espnet_prune.cost.subsampling import SUBSAMPLING_CONVS

    enc, dec = args.encoder_conf, args.decoder_conf
    h, u, d = enc["attention_heads"], enc["linear_units"], enc["output_size"]
    block = {"heads": h // 2, "ffn1_units": u // 2 if enc.get("macaron_style") else 0,
             "ffn2_units": u // 2, "conv_channels": d // 2 if enc.get("use_cnn_module", True) else 0}
    dh, du = dec.get("attention_heads", 4), dec.get("linear_units", 2048)
    layer = {"self_heads": dh // 2, "src_heads": dh // 2, "ffn_units": du // 2}
    channels = [d // 2] * len(SUBSAMPLING_CONVS[enc.get("input_layer", "conv2d")])
    return structure_args(args, [block] * enc["num_blocks"], [layer] * dec["num_blocks"], channels)


def encoder_macs(model, args, frames: int) -> float:
    from espnet_prune.bin.profile import encoder_dims_and_structure
    from espnet_prune.cost import structure_cost

    dims, structure = encoder_dims_and_structure(model, args)
    return structure_cost(dims, structure, frames / 100.0, 100.0)["macs"]


def inference_macs(model, args, frames: int, tokens: int) -> float:
    """Encoder + CTC + one hypothesis decoded for ``tokens`` steps (targets.py convention)."""
    from espnet_prune.bin.profile import encoder_dims_and_structure
    from espnet_prune.cost import frontend_cost
    from espnet_prune.targets import dense_decoder_macs

    dims, _ = encoder_dims_and_structure(model, args)
    enc = encoder_macs(model, args, frames)
    t_enc = frontend_cost(dims, frames)[2]
    ctc = t_enc * dims.output_size * model.ctc.ctc_lo.out_features
    return enc + ctc + dense_decoder_macs(model.decoder, t_enc, tokens)


def encoder_seconds(model, feats: torch.Tensor, repeats: int = 5) -> float:
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.encoder(feats, torch.tensor([feats.size(1)]))
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--beams", type=int, nargs="+", default=[1, 20])
    p.add_argument("--seconds", type=float, nargs="+", default=[10.0, 30.0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tokens_per_second", type=float, default=4.0)
    p.add_argument("--vocab_size", type=int, default=5000)
    a = p.parse_args(argv)

    import logging

    logging.disable(logging.WARNING)
    import espnet_prune
    from espnet2.tasks.asr import ASRTask

    from espnet.nets.batch_beam_search import BatchBeamSearch
    from espnet.nets.scorers.ctc import CTCPrefixScorer

    from decode_speed import beam_search, decode
    from espnet_prune.batch_search import FastBatchBeamSearch
    from espnet_prune.bin.profile import build_from_any_config
    from espnet_prune.ctc_prefix import FastCTCPrefixScorer
    from espnet_prune.shrink import fast_decoder

    espnet_prune.register()
    torch.manual_seed(0)
    dense, args = build_from_any_config(str(REPO / "conf/train_asr_conformer.yaml"), a.vocab_size)
    stock_decoder = dense.decoder  # ESPnet's TransformerDecoder, for the stock decode
    with torch.no_grad():
        stock_decoder.output_layer.bias[dense.eos] = -1e4
    dense.decoder, _ = fast_decoder(dense.decoder)
    half_args = half_structure_args(args)
    pruned = ASRTask.build_model(half_args)
    models = {"dense": dense.eval(), "half": pruned.eval()}
    margs = {"dense": args, "half": half_args}
    for m in models.values():
        with torch.no_grad():  # fixed decode length: no hypothesis ends early
            m.decoder.output_layer.bias[m.eos] = -1e4
    n = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    print(f"# params: dense {n['dense']:,}, half {n['half']:,}, ratio {n['half'] / n['dense']:.3f}")
    for seconds in a.seconds:
        frames, tokens = int(100 * seconds), int(round(a.tokens_per_second * seconds))
        e = {k: inference_macs(m, margs[k], frames, tokens) for k, m in models.items()}
        em = {k: encoder_macs(m, margs[k], frames) for k, m in models.items()}
        print(f"# {seconds:g} s, {tokens} tokens: encoder MACs ratio {em['half'] / em['dense']:.3f}, "
              f"inference MACs ratio {e['half'] / e['dense']:.3f}")
    head = ("threads", "audio s", "beam", "enc latency ratio", "decode ratio", "stock dense decode s",
            "dense decode s", "half decode s", "dense / stock", "half / stock")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    g = torch.Generator().manual_seed(1)
    speech = {s: torch.randn(1, int(16000 * s), generator=g) * 0.1 for s in a.seconds}
    k = 0
    for threads in a.threads:
        torch.set_num_threads(threads)
        def ours(m, beam):
            return beam_search(m, m.decoder, FastCTCPrefixScorer, beam, FastBatchBeamSearch)

        def stock(beam):
            return beam_search(dense, stock_decoder, CTCPrefixScorer, beam, BatchBeamSearch)

        for m in models.values():  # warm-up
            decode(m, ours(m, 2), speech[a.seconds[0]], 3)
        decode(dense, stock(2), speech[a.seconds[0]], 3)
        for seconds in a.seconds:
            tokens = int(round(a.tokens_per_second * seconds))
            with torch.inference_mode():
                feats = {name: m._extract_feats(speech[seconds], torch.tensor([speech[seconds].size(1)]))[0]
                         for name, m in models.items()}
                feats = {name: m.normalize(f, torch.tensor([f.size(1)]))[0] if m.normalize is not None else f
                         for (name, m), f in zip(models.items(), feats.values())}
            for beam in a.beams:
                order = ["dense", "half"] if k % 2 == 0 else ["half", "dense"]
                k += 1
                enc_t, dec_t = {}, {}
                for name in order:
                    m = models[name]
                    enc_t[name] = encoder_seconds(m, feats[name])
                    dec_t[name] = decode(m, ours(m, beam), speech[seconds], tokens)["total"]
                ref = decode(dense, stock(beam), speech[seconds], tokens)["total"]
                print(f"| {threads} | {seconds:g} | {beam} | {enc_t['half'] / enc_t['dense']:.3f} | "
                      f"{dec_t['half'] / dec_t['dense']:.3f} | {ref:.2f} | {dec_t['dense']:.2f} | "
                      f"{dec_t['half']:.2f} | {dec_t['dense'] / ref:.3f} | {dec_t['half'] / ref:.3f} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
