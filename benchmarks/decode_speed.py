"""Where a decode's time goes: stock ESPnet against the fast exact decode, step by step.

    python benchmarks/decode_speed.py                      # the full table (several minutes)
    python benchmarks/decode_speed.py --beams 20 --seconds 10 30 --threads 1

The model is the LibriSpeech-100 Conformer (``conf/train_asr_conformer.yaml``: 12-block
Conformer encoder, 6-layer Transformer decoder, 5000 tokens) with random weights. One
decode = ``model.encode`` of random audio (frontend included) + a batch beam search
(decoder weight 0.7, CTC prefix scorer 0.3, full pre-beam, as ``Speech2Text`` builds it) by
three systems: ``espnet`` (ESPnet 202511's ``TransformerDecoder``, ``CTCPrefixScorer`` and
``BatchBeamSearch``), ``fast_decoder`` (our
:class:`~espnet_prune.pruned_decoder.PrunedTransformerDecoder` holding the same weights,
ESPnet's CTC scorer and search) and ``fast`` (our decoder,
:class:`~espnet_prune.ctc_prefix.FastCTCPrefixScorer` and
:class:`~espnet_prune.batch_search.FastBatchBeamSearch`: what ``espnet_prune.fast_decoding``
installs). Each decode is split into encoder, decoder steps (``batch_score``; its output layer
also shown apart), CTC scoring (``batch_init_state`` + ``batch_score_partial``) and the rest
of the search (bookkeeping, pre-beam, top-k).

The number of output tokens is fixed so that every system does the same work: the
end-of-sentence output bias is set to -1e4 (no hypothesis ends early) and ``maxlenratio``
stops every decode after ``--tokens_per_second`` x seconds tokens. For each thread count,
audio length and beam the systems run one after the other (the order alternating between
configurations), after one warm-up decode each, each on its own copy of the audio; the
n-best of every system must equal ESPnet's (the script exits with status 1 otherwise).
``ratio to espnet`` = a system's whole-decode wall time / ESPnet's.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from pathlib import Path
from typing import Any, Dict, List

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build(vocab_size: int) -> torch.nn.Module:
    """The LibriSpeech-100 model, random weights, end of sentence made unreachable."""
    from espnet_prune.bin.profile import build_from_any_config

    torch.manual_seed(0)
    model, _ = build_from_any_config(str(REPO / "conf/train_asr_conformer.yaml"), vocab_size)
    model.eval()
    with torch.no_grad():  # no hypothesis may end before the fixed number of tokens
        model.decoder.output_layer.bias[model.eos] = -1e4
    return model


def beam_search(model, decoder, ctc_scorer, beam, search_cls=None):
    from espnet_prune.decode_timing import forced_search

    return forced_search(model, decoder, ctc_scorer, beam, search_cls)


def decode(model, search, speech: torch.Tensor, tokens: int) -> Dict[str, Any]:
    from espnet_prune.decode_timing import timed_decode

    return timed_decode(model, search, speech, tokens)


#: The decoding systems compared: name -> (decoder kind, CTC scorer, search class).
SYSTEMS = {"espnet": ("espnet", "CTCPrefixScorer", "BatchBeamSearch"),
           "fast_decoder": ("fast", "CTCPrefixScorer", "BatchBeamSearch"),
           "fast": ("fast", "FastCTCPrefixScorer", "FastBatchBeamSearch")}


def same_hyps(a, b) -> bool:
    """Same n-best token sequences, total scores within 1e-3."""
    return len(a) == len(b) and all(
        h1.yseq.tolist() == h2.yseq.tolist() and abs(float(h1.score) - float(h2.score)) <= 1e-3
        for h1, h2 in zip(a, b))


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--beams", type=int, nargs="+", default=[1, 10, 20])
    p.add_argument("--seconds", type=float, nargs="+", default=[10.0, 30.0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tokens_per_second", type=float, default=4.0,
                   help="output tokens per second of audio (about LibriSpeech's BPE-5000 rate)")
    p.add_argument("--vocab_size", type=int, default=5000)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    a = p.parse_args(argv)
    logging.disable(logging.WARNING)

    from espnet.nets.batch_beam_search import BatchBeamSearch
    from espnet.nets.scorers.ctc import CTCPrefixScorer

    import espnet_prune
    from espnet_prune.batch_search import FastBatchBeamSearch
    from espnet_prune.ctc_prefix import FastCTCPrefixScorer
    from espnet_prune.pruned_decoder import PrunedTransformerDecoder

    espnet_prune.register()
    model = build(a.vocab_size)
    decoders = {"espnet": model.decoder,
                "fast": PrunedTransformerDecoder.from_transformer_decoder(model.decoder)}
    classes = {"CTCPrefixScorer": CTCPrefixScorer, "FastCTCPrefixScorer": FastCTCPrefixScorer,
               "BatchBeamSearch": BatchBeamSearch, "FastBatchBeamSearch": FastBatchBeamSearch}
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{sum(p.numel() for p in model.parameters()):,} params")
    print("# espnet: ESPnet's TransformerDecoder + CTCPrefixScorer; fast_decoder: "
          "PrunedTransformerDecoder + ESPnet's CTCPrefixScorer; fast: PrunedTransformerDecoder + "
          "FastCTCPrefixScorer + FastBatchBeamSearch. Seconds per decode: total = encoder + "
          "decoder steps (of which the output layer) + CTC scoring + rest of the search.")
    head = ("threads", "audio s", "beam", "tokens", "system", "total s", "encoder s",
            "decoder s", "output layer s", "CTC s", "rest s", "ratio to espnet", "same hyps")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    g = torch.Generator().manual_seed(1)
    speech = {s: torch.randn(1, int(16000 * s), generator=g) * 0.1 for s in a.seconds}
    ok = True
    k = 0
    results: List[Dict[str, Any]] = []
    for threads in a.threads:
        torch.set_num_threads(threads)
        for dec_kind, ctc_kind, search_kind in SYSTEMS.values():  # warm-up
            decode(model, beam_search(model, decoders[dec_kind], classes[ctc_kind], 2,
                                      classes[search_kind]), speech[a.seconds[0]], 3)
        for seconds in a.seconds:
            tokens = int(round(a.tokens_per_second * seconds))
            for beam in a.beams:
                order = list(SYSTEMS)
                if k % 2:
                    order.reverse()
                k += 1
                runs = {}
                for name in order:
                    dec_kind, ctc_kind, search_kind = SYSTEMS[name]
                    search = beam_search(model, decoders[dec_kind], classes[ctc_kind], beam,
                                         classes[search_kind])
                    runs[name] = decode(model, search, speech[seconds], tokens)
                assert all(len(h.yseq) == tokens + 2 for h in runs["espnet"]["hyps"]), \
                    "decode length not fixed"
                for name in SYSTEMS:
                    r = runs[name]
                    same = same_hyps(runs["espnet"]["hyps"], r["hyps"])
                    ok &= same
                    row = dict(threads=threads, seconds=seconds, beam=beam, tokens=tokens,
                               system=name, **{k2: r[k2] for k2 in ("total", "encoder", "decoder",
                                                                     "output", "ctc", "rest")},
                               ratio=r["total"] / runs["espnet"]["total"], same=same)
                    results.append(row)
                    print(f"| {threads} | {seconds:g} | {beam} | {tokens} | {name} | "
                          f"{r['total']:.2f} | {r['encoder']:.2f} | {r['decoder']:.2f} | "
                          f"{r['output']:.2f} | {r['ctc']:.2f} | {r['rest']:.2f} | {row['ratio']:.3f} | "
                          f"{'yes' if same else 'NO'} |", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1) + "\n")
    if not ok:
        print("hypotheses differ between the systems", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
