"""Command line of the mini corpus (``python -m espnet_prune.data.mini_corpus``)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from espnet_prune.data.mini_corpus.build import make_corpus
from espnet_prune.data.mini_corpus.plan import CorpusConfig
from espnet_prune.data.mini_corpus.tts import SynthesisUnavailable


def get_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    """Options of :func:`main`; ``prog``: program name in usage (default: from argv[0])."""
    d = CorpusConfig()
    p = argparse.ArgumentParser(prog=prog,
                                description="Synthesise the mini ASR corpus (eSpeak NG).")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--n_train", type=int, default=d.n_train)
    p.add_argument("--n_dev", type=int, default=d.n_dev)
    p.add_argument("--n_test", type=int, default=d.n_test)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--n_train_speakers", type=int, default=d.n_train_speakers)
    p.add_argument("--n_dev_speakers", type=int, default=d.n_dev_speakers)
    p.add_argument("--n_test_speakers", type=int, default=d.n_test_speakers)
    p.add_argument("--min_words", type=int, default=d.min_words)
    p.add_argument("--max_words", type=int, default=d.max_words)
    p.add_argument("--snr_low", type=float, default=d.snr_low, help="dB")
    p.add_argument("--snr_high", type=float, default=d.snr_high, help="dB")
    p.add_argument("--nj", type=int, default=2, help="parallel synthesis processes")
    p.add_argument("--backend", default="auto", choices=["auto", "library", "binary"])
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output made with different arguments")
    return p


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Build the corpus the options describe; 0 on success, 1 (message on stderr) if not."""
    args = get_parser(prog).parse_args(argv)
    cfg = CorpusConfig(
        n_train=args.n_train, n_dev=args.n_dev, n_test=args.n_test, seed=args.seed,
        n_train_speakers=args.n_train_speakers, n_dev_speakers=args.n_dev_speakers,
        n_test_speakers=args.n_test_speakers, min_words=args.min_words,
        max_words=args.max_words, snr_low=args.snr_low, snr_high=args.snr_high,
    )
    try:
        make_corpus(args.out_dir, cfg, nj=args.nj, backend=args.backend,
                    overwrite=args.overwrite)
    except (SynthesisUnavailable, FileExistsError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
