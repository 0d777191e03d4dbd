"""Measure a latency table (the ``decode`` cost's coefficients) on this machine, and check it.

    python -m espnet_prune.bin.latency --config exp/mini/asr_baseline/final/config.yaml \\
        --beam 5 --seconds 2 --tokens 16 --output conf/mini/latency.yaml

The model of ``--config`` (a saved ``config.yaml`` or a training config) is built with
random weights, dense and in ``--structures`` random pruned structures (every block module
and decoder sublayer kept at a random size or removed; ``pruned_conformer`` +
``pruned_transformer``, as the shrinker writes them). Each decodes a random input of
``--seconds`` for exactly ``--tokens`` steps (end of sentence made unreachable) with the fast
exact decode (:func:`espnet_prune.decode_timing.fast_search`) at ``--beam``, split into
encoder, decoder steps and the rest; structures interleaved, median of ``--repeats``. Least
squares with non-negative coefficients (:mod:`espnet_prune.cost.latency`):

* encoder seconds = ``encoder_mac_s`` * MACs + ``encoder_module_s`` * kept modules + c_e;
* decoder seconds = ``decoder_mac_s`` * MACs (one hypothesis) + ``decoder_sublayer_s`` *
  steps * kept sublayers + c_d * steps;
* ``step_s`` = c_d + the rest (CTC scoring, search) per step; ``utterance_s`` = c_e.

The check: the table is fitted on half of the structures and the other half's whole
decodes are predicted (printed, with the relative errors); the written table is then fitted
on all of them.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from espnet_prune.cost.latency import DECODER_SUBLAYERS, ENCODER_MODULES, LatencyTable, decode_seconds
from espnet_prune.recipe.measure import cpu_model


def structure_args(args: argparse.Namespace, blocks: Sequence[Dict[str, int]],
                   layers: Sequence[Dict[str, int]], channels: Sequence[int] = ()) -> argparse.Namespace:
    """Training args of the model with these block and decoder layer structures (and these
    front-end conv channels, if any)."""
    out = copy.deepcopy(args)
    out.encoder = "pruned_conformer"
    out.encoder_conf = dict(args.encoder_conf, block_structures=list(blocks))
    if channels:
        out.encoder_conf["subsampling_channels"] = list(channels)
    out.decoder = "pruned_transformer"
    out.decoder_conf = dict(args.decoder_conf, layer_structures=list(layers))
    return out


def random_structures(args: argparse.Namespace, n: int, seed: int) -> List[argparse.Namespace]:
    """``n`` random pruned structures of the dense model of ``args``. Per structure a removal
    probability ``p`` (uniform in [0, 0.8]) and a largest share ``m`` (1/8 or 1); each
    module is removed with probability ``p``, else keeps a uniform random number of units
    up to ``m`` of them: module counts and sizes vary independently, so that the fit can
    tell a module's call overhead from its arithmetic. Every front-end conv keeps a random
    number of its channels."""
    from espnet_prune.cost.subsampling import SUBSAMPLING_CONVS

    rng = random.Random(seed)
    enc, dec = args.encoder_conf, args.decoder_conf
    h, u, d = enc["attention_heads"], enc["linear_units"], enc["output_size"]
    dh, du = dec.get("attention_heads", 4), dec.get("linear_units", 2048)
    p_remove, share = 0.0, 1.0

    def size(full: int) -> int:
        return 0 if rng.random() < p_remove else rng.randint(1, max(1, int(full * share)))

    out = []
    for _ in range(n):
        p_remove, share = rng.uniform(0.0, 0.8), rng.choice((0.125, 1.0))
        blocks = [{"heads": size(h), "ffn1_units": size(u) if enc.get("macaron_style") else 0,
                   "ffn2_units": size(u), "conv_channels": size(d) if enc.get("use_cnn_module", True) else 0}
                  for _ in range(enc["num_blocks"])]
        layers = [{"self_heads": size(dh), "src_heads": size(dh), "ffn_units": size(du)}
                  for _ in range(dec.get("num_blocks", 6))]
        convs = SUBSAMPLING_CONVS.get(enc.get("input_layer", "conv2d"), ())
        out.append(structure_args(args, blocks, layers, [rng.randint(1, d) for _ in convs]))
    return out


def quantities(model: torch.nn.Module, args: argparse.Namespace, seconds: float, fps: float,
               steps: int) -> Tuple[float, float, Dict[str, int], float, Dict[str, int]]:
    """(front-end MACs, block MACs, kept encoder modules per kind, decoder MACs of one
    hypothesis for ``steps`` steps, kept decoder sublayers per kind) of a built model: what a
    table prices."""
    from espnet_prune.bin.profile import encoder_dims_and_structure
    from espnet_prune.cost import frontend_cost, structure_cost
    from espnet_prune.targets import decoder_sublayer_counts, dense_decoder_macs

    dims, structure = encoder_dims_and_structure(model, args)
    cost = structure_cost(dims, structure, seconds, fps)
    modules = {kind: sum(block.units(kind) > 0 for block in structure) for kind in ENCODER_MODULES}
    t_enc = frontend_cost(dims, int(round(seconds * fps)))[2]
    return (float(cost["macs"] - cost["block_macs"]), float(cost["block_macs"]), modules,
            dense_decoder_macs(model.decoder, t_enc, steps), decoder_sublayer_counts(model.decoder))


def model_decode_seconds(model: torch.nn.Module, args: argparse.Namespace, table: LatencyTable,
                         seconds: float, fps: float, steps: int) -> float:
    """The table's prediction of one decode of ``model`` (``seconds`` of audio, ``steps``)."""
    return decode_seconds(table, *quantities(model, args, seconds, fps, steps), steps)


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0
    x, _ = nnls(a / scale, b)
    return x / scale


def fit(rows: Sequence[Dict[str, float]], beam: int, threads: int, seconds: float = 0.0) -> LatencyTable:
    """The table fitted to measured decodes (rows of :func:`measure`)."""
    steps = np.array([r["steps"] for r in rows], float)
    enc = _nnls(np.array([[r["fe_macs"], r["block_macs"], *(r["enc_modules"][k] for k in ENCODER_MODULES), 1.0]
                          for r in rows]),
                np.array([r["encoder"] for r in rows]))
    dec = _nnls(np.array([[r["dec_macs"], *(r["steps"] * r["dec_sublayers"][k] for k in DECODER_SUBLAYERS),
                           r["steps"]] for r in rows]),
                np.array([r["decoder"] for r in rows]))
    n_enc, n_dec = len(ENCODER_MODULES), len(DECODER_SUBLAYERS)
    rest = np.array([r["total"] - r["encoder"] - r["decoder"] for r in rows]) / steps
    return LatencyTable(frontend_mac_s=float(enc[0]), encoder_mac_s=float(enc[1]),
                        encoder_module_s={k: float(v) for k, v in zip(ENCODER_MODULES, enc[2:2 + n_enc])},
                        decoder_mac_s=float(dec[0]),
                        decoder_sublayer_s={k: float(v) for k, v in zip(DECODER_SUBLAYERS, dec[1:1 + n_dec])},
                        step_s=float(dec[1 + n_dec] + float(np.mean(rest))), utterance_s=float(enc[2 + n_enc]),
                        beam=beam, threads=threads, seconds=seconds, steps=int(rows[0]["steps"]),
                        machine=cpu_model())


def measure(configs: Sequence[argparse.Namespace], beam: int, seconds: float, fps: float,
            tokens: int, repeats: int) -> List[Dict[str, float]]:
    """Median decode times (split) of every structure, interleaved, with its quantities."""
    from espnet2.tasks.asr import ASRTask

    from espnet_prune.decode_timing import fast_search, force_length, timed_decode

    from espnet_prune.shrink import fast_decoder

    models = []
    for args in configs:
        torch.manual_seed(0)
        model = ASRTask.build_model(args).eval()
        model.decoder = fast_decoder(model.decoder)[0]  # a dense ESPnet decoder: our fast path
        models.append(force_length(model))
    g = torch.Generator().manual_seed(1)
    if models[0].frontend is None:
        speech = torch.randn(1, int(round(seconds * fps)), configs[0].input_size, generator=g)
    else:
        speech = torch.randn(1, int(round(seconds * 16000)), generator=g) * 0.1
    runs: List[List[Dict[str, Any]]] = [[] for _ in models]
    for r in range(repeats + 1):  # the first round warms up
        order = list(range(len(models)))
        random.Random(r).shuffle(order)
        for i in order:
            out = timed_decode(models[i], fast_search(models[i], beam), speech, tokens)
            if r > 0:
                runs[i].append(out)
    rows = []
    for model, args, rs in zip(models, configs, runs):
        steps = rs[0]["steps"]
        q = quantities(model, args, seconds, fps, steps)
        rows.append(dict(zip(("fe_macs", "block_macs", "enc_modules", "dec_macs", "dec_sublayers"), q),
                         steps=steps, **{k: statistics.median(x[k] for x in rs)
                                         for k in ("total", "encoder", "decoder")}))
    return rows


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a model's config.yaml or a training config")
    p.add_argument("--output", required=True, help="the latency table to write (YAML)")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.0, help="audio of the timed input (s)")
    p.add_argument("--frames_per_second", type=float, default=100.0)
    p.add_argument("--tokens", type=int, default=16, help="decoder steps of the timed decodes")
    p.add_argument("--structures", type=int, default=24, help="random pruned structures")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vocab_size", type=int, default=5000,
                   help="token count when the config has no token_list")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(cmd: Optional[List[str]] = None) -> LatencyTable:
    import logging

    import yaml

    from espnet_prune.bin.profile import build_from_any_config
    from espnet_prune.fileio import atomic_write_text

    a = get_parser().parse_args(cmd)
    logging.disable(logging.WARNING)
    torch.set_num_threads(a.threads)
    _, args = build_from_any_config(a.config, a.vocab_size)
    if getattr(args, "decoder", None) not in ("transformer", "pruned_transformer", "gated_transformer"):
        raise SystemExit(f"{a.config}: a latency table needs a Transformer decoder, got {args.decoder!r}")
    configs = [copy.deepcopy(args)] + random_structures(args, a.structures, a.seed)  # dense first
    rows = measure(configs, a.beam, a.seconds, a.frames_per_second, a.tokens, a.repeats)
    train, held = rows[0::2], rows[1::2]
    half = fit(train, a.beam, a.threads)
    print(f"# {len(rows)} structures ({a.seconds:g} s, {rows[0]['steps']} steps, beam {a.beam}, "
          f"{a.threads} thread(s)); fitted on {len(train)}, predicted on the other {len(held)}:")
    print("| structure | measured ms | predicted ms | error |")
    print("|---|---|---|---|")
    errors = []
    for k, r in enumerate(held):
        pred = decode_seconds(half, r["fe_macs"], r["block_macs"], r["enc_modules"], r["dec_macs"],
                              r["dec_sublayers"], r["steps"])
        errors.append(pred / r["total"] - 1)
        print(f"| {2 * k + 1} | {r['total'] * 1e3:.2f} | {pred * 1e3:.2f} | {errors[-1]:+.1%} |")
    print(f"# held-out mean |error| {np.mean(np.abs(errors)):.1%}, max {np.max(np.abs(errors)):.1%}")
    table = fit(rows, a.beam, a.threads, a.seconds)
    conf = table.as_dict()
    conf["fit"] = dict(config=str(a.config), structures=len(rows), held_out_mean_abs_error=round(float(np.mean(np.abs(errors))), 4),
                       held_out_max_abs_error=round(float(np.max(np.abs(errors))), 4))
    atomic_write_text(a.output, yaml.safe_dump(conf, sort_keys=False))
    print(yaml.safe_dump(conf, sort_keys=False))
    return table


if __name__ == "__main__":
    main()
