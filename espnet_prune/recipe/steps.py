"""Small recipe steps that run.sh calls (each restartable, each writes atomically).

    python -m espnet_prune.recipe.steps combine --dst data/dev data/dev_clean data/dev_other
    python -m espnet_prune.recipe.steps split_scp --scp dump/fbank/test/feats.scp --nj 4 --out_dir D
    python -m espnet_prune.recipe.steps merge_text --output D/text D/output.1/1best_recog/text ...
    python -m espnet_prune.recipe.steps finetune_config --shrunk_config exp/p/shrunk/config.yaml \
        --finetune_config conf/finetune.yaml --output exp/p/finetune.yaml
    python -m espnet_prune.recipe.steps export --config exp/b/config.yaml --model exp/b/valid.acc.ave.pth \
        --output_dir exp/b/final
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Sequence

import yaml

from espnet_prune.data.kaldi_dir import read_data_dir, read_kaldi_map, write_data_dir
from espnet_prune.fileio import atomic_copy, atomic_write_text


def combine(dst: Path, srcs: Sequence[Path]) -> None:
    """Concatenate Kaldi data dirs (utterance ids must be unique across them)."""
    dirs = [read_data_dir(s) for s in srcs]
    merged = dirs[0]
    merged.extra = {}  # per-set side tables (utt2voice, spk2gender...) are not merged
    for other, src in zip(dirs[1:], srcs[1:]):
        dup = set(merged.wav_scp) & set(other.wav_scp)
        if dup:
            raise ValueError(f"{src}: utterance {sorted(dup)[0]} already in another source dir")
        merged.wav_scp.update(other.wav_scp)
        merged.text.update(other.text)
        merged.utt2spk.update(other.utt2spk)
        if merged.utt2dur is not None and other.utt2dur is not None:
            merged.utt2dur.update(other.utt2dur)
        else:
            merged.utt2dur = None
    write_data_dir(dst, merged)


def split_scp(scp: Path, nj: int, out_dir: Path) -> List[Path]:
    """Split ``scp`` into ``nj`` contiguous parts ``out_dir/keys.{1..nj}.scp`` (fewer when it has
    fewer lines). A part whose content is unchanged is not rewritten (its time stamp tells the
    recipe whether its decode is stale); parts beyond the new count are removed."""
    lines = [l for l in Path(scp).read_text(encoding="utf-8").splitlines() if l.strip()]
    if not lines:
        raise ValueError(f"{scp}: empty")
    nj = max(1, min(nj, len(lines)))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for j in range(nj):
        text = "\n".join(lines[j * len(lines) // nj:(j + 1) * len(lines) // nj]) + "\n"
        path = out_dir / f"keys.{j + 1}.scp"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
        paths.append(path)
    for old in out_dir.glob("keys.*.scp"):
        if old not in paths:
            old.unlink()
    return paths


def merge_text(output: Path, parts: Sequence[Path], expect: Optional[Path] = None) -> None:
    """Merge per-job ``text`` outputs; with ``expect``, check every key is decoded."""
    merged = {}
    for part in parts:
        merged.update(read_kaldi_map(part, allow_empty_value=True))
    if expect is not None:
        missing = sorted(set(read_kaldi_map(expect, allow_empty_value=True)) - set(merged))
        if missing:
            raise ValueError(f"{output}: {len(missing)} utterances not decoded, e.g. {missing[0]}")
    atomic_write_text(output, "".join(f"{k} {v}\n" for k, v in sorted(merged.items())))


def finetune_config(shrunk_config: Path, finetune: Path, output: Path) -> None:
    """Fine-tune config = ``finetune`` options + the shrunk model's architecture and data options."""
    shrunk = yaml.safe_load(Path(shrunk_config).read_text(encoding="utf-8"))
    conf = yaml.safe_load(Path(finetune).read_text(encoding="utf-8"))
    for key in ("encoder", "encoder_conf", "decoder", "decoder_conf", "frontend", "frontend_conf",
                "specaug", "specaug_conf", "normalize", "normalize_conf", "input_size",
                "token_list", "token_type", "bpemodel"):
        if key in shrunk and key not in conf:
            conf[key] = shrunk[key]
    model_conf = dict(shrunk.get("model_conf") or {})
    model_conf.update(conf.get("model_conf") or {})
    conf["model_conf"] = model_conf
    atomic_write_text(output, yaml.safe_dump(conf, sort_keys=False))


def export(config: Path, model: Path, output_dir: Path) -> None:
    """Copy a trained model (``config.yaml`` + weights) to ``output_dir`` atomically."""
    for src in (config, model):
        if not Path(src).is_file():
            raise FileNotFoundError(f"export: {src} not found")
    for src, name in ((model, "model.pth"), (config, "config.yaml")):
        atomic_copy(src, output_dir / name)


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("combine")
    c.add_argument("--dst", type=Path, required=True)
    c.add_argument("srcs", type=Path, nargs="+")
    s = sub.add_parser("split_scp")
    s.add_argument("--scp", type=Path, required=True)
    s.add_argument("--nj", type=int, required=True)
    s.add_argument("--out_dir", type=Path, required=True)
    m = sub.add_parser("merge_text")
    m.add_argument("--output", type=Path, required=True)
    m.add_argument("--expect", type=Path)
    m.add_argument("parts", type=Path, nargs="+")
    f = sub.add_parser("finetune_config")
    f.add_argument("--shrunk_config", type=Path, required=True)
    f.add_argument("--finetune_config", type=Path, required=True)
    f.add_argument("--output", type=Path, required=True)
    e = sub.add_parser("export")
    e.add_argument("--config", type=Path, required=True)
    e.add_argument("--model", type=Path, required=True)
    e.add_argument("--output_dir", type=Path, required=True)
    a = p.parse_args(argv)
    if a.cmd == "combine":
        combine(a.dst, a.srcs)
    elif a.cmd == "split_scp":
        print(len(split_scp(a.scp, a.nj, a.out_dir)))
    elif a.cmd == "merge_text":
        merge_text(a.output, a.parts, a.expect)
    elif a.cmd == "finetune_config":
        finetune_config(a.shrunk_config, a.finetune_config, a.output)
    else:
        export(a.config, a.model, a.output_dir)


if __name__ == "__main__":
    main()
