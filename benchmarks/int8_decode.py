"""int8 on top of the fast decode: WER and decode time of trained models, float32 and int8.

    python benchmarks/int8_decode.py --model baseline=exp/mini/asr_baseline/final \\
        --model pruned=exp/mini/prune_params0.5/final --data dump/mini/fbank/test \\
        --config conf/mini/decode_asr.yaml --utts 300

(run from ``egs2/librispeech_prune/asr1`` after ``make demo``). Every model is decoded by four
systems through ESPnet's ``Speech2Text`` with the decode config's options: ``espnet``
(stock ESPnet 202511), ``fast`` (:func:`espnet_prune.fast_decoding`), ``espnet_int8``
(ESPnet's ``--quantize_asr_model``: dynamic int8 of every Linear) and ``fast_int8`` (the same
quantization applied after the fast decoder is in, as ``espnet_prune.bin.asr_inference
--quantize_asr_model true`` does). All systems of all models decode each utterance in turn
(round-robin, every call on its own copy of the features, after one warm-up utterance), so
they share the machine's state. Printed per system: WER (sclite-compatible, on the first
``--utts`` utterances), decode time, and its ratios to the same model's ``espnet`` decode
and to the first model's ``fast`` decode; float32 systems' hypotheses are checked equal
(``fast`` against ``espnet``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SYSTEMS = ("espnet", "fast", "espnet_int8", "fast_int8")


def build(model_dir: Path, options: Dict, system: str):
    """A Speech2Text of ``model_dir`` decoding as ``system`` says."""
    from espnet2.bin.asr_inference import Speech2Text

    from espnet_prune.bin.asr_inference import fast_speech2text_class

    cls = fast_speech2text_class(Speech2Text) if system.startswith("fast") else Speech2Text
    return cls(asr_train_config=str(model_dir / "config.yaml"),
               asr_model_file=str(model_dir / "model.pth"), device="cpu",
               quantize_asr_model=system.endswith("int8"), **options)


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="name=dir (config.yaml, model.pth)")
    p.add_argument("--data", required=True, help="dir with feats.scp and text")
    p.add_argument("--config", required=True, help="decode YAML (beam_size, ctc_weight, ...)")
    p.add_argument("--utts", type=int, default=300)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)
    import kaldiio

    import espnet_prune
    from espnet_prune.data.scoring import read_text, wer

    espnet_prune.register()
    torch.set_num_threads(1)
    options = yaml.safe_load(Path(a.config).read_text()) or {}
    models = dict(m.split("=", 1) for m in a.model)
    data = Path(a.data)
    feats = list(kaldiio.load_scp_sequential(str(data / "feats.scp")))[: a.utts]
    refs = read_text(data / "text")
    decoders = {(name, s): build(Path(d), options, s) for name, d in models.items() for s in SYSTEMS}
    hyps: Dict[tuple, Dict[str, str]] = {k: {} for k in decoders}
    tokens: Dict[tuple, Dict[str, List[int]]] = {k: {} for k in decoders}
    seconds = {k: 0.0 for k in decoders}
    with torch.inference_mode():
        for s2t in decoders.values():  # warm-up
            s2t(torch.from_numpy(feats[0][1].copy()))
        for utt, x in feats:
            for key, s2t in decoders.items():
                inp = torch.from_numpy(x.copy())
                t0 = time.perf_counter()
                best = s2t(inp)[0]
                seconds[key] += time.perf_counter() - t0
                hyps[key][utt], tokens[key][utt] = best[0], best[2]
    audio = sum(x.shape[0] for _, x in feats) / 100.0
    first = next(iter(models))
    rows = []
    print(f"# {len(feats)} utterances of {data}, {audio:.1f} s of audio, options {options}, 1 thread")
    print("| model | system | WER | decode s | RTF | / own espnet | / first model's fast | same hyps as espnet |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, system), t in seconds.items():
        ref = {u: refs[u] for u in hyps[name, system]}
        same = tokens[name, system] == tokens[name, "espnet"] if system == "fast" else None
        row = dict(model=name, system=system, wer=wer(ref, hyps[name, system]), seconds=t,
                   rtf=t / audio, vs_espnet=t / seconds[name, "espnet"],
                   vs_first_fast=t / seconds[first, "fast"], same_hyps=same)
        rows.append(row)
        print(f"| {name} | {system} | {row['wer']:.1f} | {t:.2f} | {row['rtf']:.4f} | "
              f"{row['vs_espnet']:.3f} | {row['vs_first_fast']:.3f} | "
              f"{'-' if same is None else ('yes' if same else 'NO')} |", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if all(r["same_hyps"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
