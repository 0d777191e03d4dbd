"""CTC prefix scoring in a beam search: ESPnet 202511's CTCPrefixScorer against FastCTCPrefixScorer.

    python benchmarks/ctc_speed.py                                # CPU, the default table
    python benchmarks/ctc_speed.py --device cuda --frames 250 750 --beams 10 20

What is timed is the CTC scorer alone inside ESPnet's ``BatchBeamSearch`` at batch 1, as
``Speech2Text`` builds it (CTC weight 0.3, pre-beam of 1.5 x beam candidates from the full
scores) over a 5000-token vocabulary: ``batch_init_state`` plus every ``batch_score_partial``
call, summed over a fixed number of output steps. The decoder is a stand-in that costs almost
nothing (a fixed random bigram table), so that the two searches differ only in the CTC
scorer; end of sentence is unreachable (bigram score -1e4), so both run the same number of
steps. CTC posteriors are peaky (a token every 2-5 frames, blank in between, as a trained
model's) and the same for both. The two scorers run one after the other, order alternating,
after a warm-up; the n-best of the two searches must be identical (exit status 1 otherwise).
On CUDA every timed call is synchronised.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class LogitsCTC(torch.nn.Module):
    """CTC whose input are its logits."""

    def log_softmax(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(x, dim=-1)


def bigram_scorer(vocab: int, eos: int, device: torch.device):
    """A decoder stand-in: fixed random next-token log-probabilities, eos unreachable."""
    from espnet.nets.scorer_interface import BatchScorerInterface

    class Bigram(BatchScorerInterface, torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(2)
            table = torch.log_softmax(torch.randn(vocab, vocab, generator=g), -1)
            table[:, eos] = -1e4
            self.table = table.to(device)

        def init_state(self, x):
            return None

        def score(self, y, state, x):
            return self.table[y[-1]], None

        def batch_score(self, ys, states, xs):
            return self.table[ys[:, -1]], states

    return Bigram()


def peaky_logits(frames: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """(frames, vocab) logits of a CTC-like alignment of random tokens."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, vocab, generator=g)
    x[:, 0] += 6.0
    t = 0
    while t < frames:
        x[t, int(torch.randint(1, vocab - 1, (1,), generator=g))] += 9.0
        t += int(torch.randint(2, 6, (1,), generator=g))
    return x


class Timed:
    """Wraps a scorer's batch methods, summing their (synchronised) wall time."""

    def __init__(self, scorer: Any, device: torch.device) -> None:
        self.seconds = 0.0
        for name in ("batch_init_state", "batch_score_partial"):
            setattr(scorer, name, self._wrap(getattr(scorer, name), device))

    def _wrap(self, fn, device):
        def run(*args, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            self.seconds += time.perf_counter() - t0
            return out
        return run


def run_search(scorer_cls, x: torch.Tensor, beam: int, steps: int, device: torch.device):
    """(CTC seconds, whole search seconds, n-best) of one search of ``steps`` tokens."""
    from espnet.nets.batch_beam_search import BatchBeamSearch

    vocab = x.size(1)
    eos = vocab - 1
    ctc = scorer_cls(LogitsCTC(), eos)
    search = BatchBeamSearch(
        beam_size=beam, vocab_size=vocab, sos=eos, eos=eos, weights=dict(decoder=0.7, ctc=0.3),
        scorers=dict(decoder=bigram_scorer(vocab, eos, device), ctc=ctc),
        token_list=[str(i) for i in range(vocab)], pre_beam_score_key="full").to(device)
    timer = Timed(ctc, device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        hyps = search(x=x, maxlenratio=(steps + 0.5) / x.size(0), minlenratio=0.0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return timer.seconds, time.perf_counter() - t0, hyps


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--frames", type=int, nargs="+", default=[250, 750],
                   help="encoder frames (250 = 10 s, 750 = 30 s at 40 ms per frame)")
    p.add_argument("--beams", type=int, nargs="+", default=[10, 20])
    p.add_argument("--tokens_per_frame", type=float, default=0.16,
                   help="output steps per encoder frame (4 tokens per second of audio)")
    p.add_argument("--vocab_size", type=int, default=5000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    logging.disable(logging.WARNING)  # ESPnet's per-search "max output length" notices
    from espnet.nets.scorers.ctc import CTCPrefixScorer

    from espnet_prune.ctc_prefix import FastCTCPrefixScorer

    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        platform.processor() or platform.machine())
    print(f"# {name}, torch {torch.__version__}, {a.threads} thread(s), vocab {a.vocab_size}")
    head = ("frames", "beam", "steps", "ESPnet CTC s", "fast CTC s", "CTC ratio",
            "ESPnet ms/step", "fast ms/step", "same hyps")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    systems = {"espnet": CTCPrefixScorer, "fast": FastCTCPrefixScorer}
    warm = peaky_logits(60, a.vocab_size).to(device)
    for cls in systems.values():
        run_search(cls, warm, 2, 3, device)
    ok, k, rows = True, 0, []
    for frames in a.frames:
        x = peaky_logits(frames, a.vocab_size, seed=frames).to(device)
        steps = max(1, int(round(a.tokens_per_frame * frames)))
        for beam in a.beams:
            order = list(systems) if k % 2 == 0 else list(reversed(systems))
            k += 1
            out: Dict[str, Any] = {n: run_search(systems[n], x, beam, steps, device) for n in order}
            same = [h.yseq.tolist() for h in out["espnet"][2]] == [h.yseq.tolist() for h in out["fast"][2]]
            ok &= same
            te, tf = out["espnet"][0], out["fast"][0]
            row = dict(device=name, frames=frames, beam=beam, steps=steps, espnet_ctc_s=te,
                       fast_ctc_s=tf, ratio=tf / te, same=same)
            rows.append(row)
            print(f"| {frames} | {beam} | {steps} | {te:.3f} | {tf:.3f} | {tf / te:.3f} | "
                  f"{1e3 * te / steps:.2f} | {1e3 * tf / steps:.2f} | {'yes' if same else 'NO'} |",
                  flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    if not ok:
        print("hypotheses differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
