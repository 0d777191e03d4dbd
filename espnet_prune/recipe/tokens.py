"""Stage 3 of the recipe: sentencepiece model, ESPnet token list and text shape files.

    python -m espnet_prune.recipe.tokens train --text data/train/text --out_dir data/token_list/unigram80 \
        --vocab_size 80 --model_type unigram
    python -m espnet_prune.recipe.tokens shape --bpemodel data/token_list/unigram80/bpe.model \
        --text dump/fbank/train/text --output dump/fbank/train/text_shape.bpe

The token list follows ESPnet: ``<blank>``, ``<unk>``, the pieces, ``<sos/eos>``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import List, Optional

from espnet_prune.data.kaldi_dir import atomic_write_text, read_kaldi_map


def train_bpe(text: Path, out_dir: Path, vocab_size: int, model_type: str = "unigram",
              character_coverage: float = 1.0) -> Path:
    """Train sentencepiece on the transcripts of a Kaldi ``text`` file; write the token list.

    Returns ``out_dir/tokens.txt``. Re-running with complete outputs does nothing.
    """
    import sentencepiece as spm

    out_dir = Path(out_dir)
    model, tokens = out_dir / "bpe.model", out_dir / "tokens.txt"
    if model.is_file() and tokens.is_file():
        return tokens
    out_dir.mkdir(parents=True, exist_ok=True)
    sentences = list(read_kaldi_map(text, allow_empty_value=True).values())
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        corpus = Path(tmp) / "train.txt"
        corpus.write_text("\n".join(sentences) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(Path(tmp) / "bpe"), vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage,
            input_sentence_size=100000000, unk_surface="<unk>", minloglevel=2,
            hard_vocab_limit=False,  # a tiny corpus may not support vocab_size pieces
        )
        os.replace(Path(tmp) / "bpe.vocab", out_dir / "bpe.vocab")
        sp = spm.SentencePieceProcessor(model_file=str(Path(tmp) / "bpe.model"))
        pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
        pieces = [p for p in pieces if p not in ("<unk>", "<s>", "</s>")]
        atomic_write_text(tokens, "\n".join(["<blank>", "<unk>", *pieces, "<sos/eos>"]) + "\n")
        os.replace(Path(tmp) / "bpe.model", model)  # last: its presence marks completion
    return tokens


def write_text_shape(bpemodel: Path, text: Path, output: Path, vocab_size: int) -> None:
    """``utt n_tokens,vocab`` lines, the shape file ESPnet's batch samplers read."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(bpemodel))
    lines = [
        f"{utt} {len(sp.encode(sentence, out_type=str))},{vocab_size}"
        for utt, sentence in read_kaldi_map(text, allow_empty_value=True).items()
    ]
    atomic_write_text(output, "\n".join(lines) + "\n")


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--text", type=Path, required=True)
    t.add_argument("--out_dir", type=Path, required=True)
    t.add_argument("--vocab_size", type=int, required=True)
    t.add_argument("--model_type", default="unigram", choices=["unigram", "bpe", "char", "word"])
    s = sub.add_parser("shape")
    s.add_argument("--bpemodel", type=Path, required=True)
    s.add_argument("--text", type=Path, required=True)
    s.add_argument("--output", type=Path, required=True)
    s.add_argument("--token_list", type=Path, required=True)
    a = p.parse_args(argv)
    if a.cmd == "train":
        print(train_bpe(a.text, a.out_dir, a.vocab_size, a.model_type))
    else:
        vocab = len(a.token_list.read_text(encoding="utf-8").splitlines())
        write_text_shape(a.bpemodel, a.text, a.output, vocab)


if __name__ == "__main__":
    main()
