"""Training step time of pruning (student + frozen teacher + gates + distillation)
divided by the dense baseline's step time, measured in one run on the same batches.

    python benchmarks/prune_step_time.py                 # small and LibriSpeech-100 configs
    python benchmarks/prune_step_time.py --configs small --steps 5

A step is forward + backward + optimizer step(s) on one batch of random 16 kHz
audio with random token targets. Prints one line per config and the ratio of
medians. Goal (issue 3): ratio <= 1.5.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]

SMALL = {
    "encoder": "conformer",
    "encoder_conf": dict(output_size=144, attention_heads=4, linear_units=576, num_blocks=4,
                         input_layer="conv2d", macaron_style=True, rel_pos_type="latest",
                         pos_enc_layer_type="rel_pos", selfattention_layer_type="rel_selfattn",
                         use_cnn_module=True, cnn_module_kernel=15),
    "decoder": "transformer",
    "decoder_conf": dict(attention_heads=4, linear_units=576, num_blocks=2),
    "model_conf": dict(ctc_weight=0.3, lsm_weight=0.1),
    "frontend_conf": dict(n_fft=512, hop_length=160, n_mels=80),
}


def load_librispeech() -> Dict:
    conf = yaml.safe_load((ROOT / "conf/train_asr_conformer.yaml").read_text())
    return {k: conf[k] for k in ("encoder", "encoder_conf", "decoder", "decoder_conf", "model_conf", "frontend_conf")}


def build(conf: Dict, vocab: int, tmp: Path, name: str):
    from espnet_prune.task import PruneASRTask

    conf = copy.deepcopy(conf)
    conf.update(token_list=[f"t{i}" for i in range(vocab)], token_type="bpe", bpemodel=None, init=None,
                normalize="utterance_mvn", specaug=None)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(conf))
    args = PruneASRTask.get_parser().parse_args(["--config", str(path), "--output_dir", str(tmp / name)])
    args.optim, args.optim_conf = "adam", {"lr": 1e-4}
    model = PruneASRTask.build_model(args)
    return model, args, PruneASRTask.build_optimizers(args, model)


def step_times(model, optimizers, batches, steps: int) -> List[float]:
    model.train()
    times = []
    for i in range(steps + 1):
        speech, lens, text, tlens = batches[i % len(batches)]
        t0 = time.perf_counter()
        loss, _, _ = model(speech, lens, text.clone(), tlens)
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad()
        if i > 0:  # first step warms up allocators and caches
            times.append(time.perf_counter() - t0)
    return times


def bench(name: str, conf: Dict, batch: int, seconds: float, vocab: int, steps: int) -> float:
    from espnet_prune.model_io import save_asr_model

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        dense, dense_args, dense_opt = build(conf, vocab, tmp, "dense")
        save_asr_model(tmp / "teacher", dense, dense_args)
        pconf = copy.deepcopy(conf)
        pconf["encoder"] = "gated_conformer"
        pconf["model"] = "prune_espnet"
        pconf["model_conf"].update(
            teacher_config=str(tmp / "teacher/config.yaml"),
            teacher_model_file=str(tmp / "teacher/model.pth"),
            target={"params": 0.5}, target_warmup_steps=1000,
        )
        student, _, student_opt = build(pconf, vocab, tmp, "prune")
        g = torch.Generator().manual_seed(1)
        n = int(seconds * 16000)
        batches = []
        for _ in range(2):
            lens = torch.tensor([n] + [int(n * 0.8)] * (batch - 1))
            text = torch.randint(1, vocab - 1, (batch, int(seconds * 3)), generator=g)
            batches.append((torch.randn(batch, n, generator=g), lens, text, torch.full((batch,), text.size(1))))
        # interleave so that both models see the same machine state
        d_times, p_times = [], []
        for _ in range(2):
            d_times += step_times(dense, dense_opt, batches, steps)
            p_times += step_times(student, student_opt, batches, steps)
    d, p = statistics.median(d_times), statistics.median(p_times)
    print(f"{name}: dense step {d * 1000:.0f} ms, pruning step {p * 1000:.0f} ms, "
          f"ratio {p / d:.2f} (batch {batch} x {seconds:.0f} s, {len(d_times)} steps each, "
          f"{torch.get_num_threads()} threads)", flush=True)
    return p / d


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["small", "librispeech100"])
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import espnet_prune

    espnet_prune.register()
    setups = {
        "small": (SMALL, 8, 5.0, 80),
        "librispeech100": (load_librispeech(), 4, 10.0, 5000),
    }
    ratios = {c: bench(c, *setups[c], steps=a.steps) for c in a.configs}
    print("ratios (pruning / dense step time):", {k: round(v, 2) for k, v in ratios.items()}, "goal <= 1.5")


if __name__ == "__main__":
    main()
