"""RESULTS.md of the recipe report: ESPnet's RESULTS layout plus size, cost and timing tables.

:func:`format_markdown` turns the JSON-able report of :mod:`espnet_prune.recipe.report`
into Markdown, one function per section.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

from espnet_prune.recipe import evidence


def fmt(x: Optional[float], spec: str) -> str:
    """``format(x, spec)``; ``-`` for a missing or non-finite value."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec)


DEFINITIONS = (
    "Every ratio is to the reference model `{ref}` (first `--model`). "
    "**WER** (%): sclite-compatible (S + D + I) / reference words, from "
    "`<model>/{decode}_<set>/score_wer/result.txt`, one decimal as sclite prints it. "
    "**params**: `numel` of the built ESPnet model (whole model, and encoder alone). "
    "**enc MACs@{sec:g}s**: multiply-accumulates of the encoder's matrix products and "
    "convolutions (subsampling front end + blocks) for {sec:g} s of audio at "
    "{fps:g} frames/s, from the exact cost model `espnet_prune.cost`. "
    "**dec MACs/token**: the decoder's multiply-accumulates per output token of one "
    "hypothesis (self attention over the prefix, source attention over the encoder output, "
    "FFN, output layer; averaged over {tok} tokens), as the fast decoder runs it "
    "(`espnet_prune.cost.decoder_cost`). **inference MACs**: encoder + CTC projection + "
    "decoder for {tok} tokens of one hypothesis, source keys/values once per utterance "
    "(the `macs` target of `espnet_prune.targets`). "
    "**Sparsity** = 1 - cost(model) / cost(reference), given below for params of the whole "
    "model, of the encoder and of the prunable blocks, and for MACs of the whole encoder and "
    "of the blocks. "
    "**enc latency ratio**: wall time of `model.encode(feats, lens)` (batch 1, "
    "{threads} thread(s), `torch.inference_mode`, after a warm-up pass), median of "
    "{reps} runs per utterance, summed over the first {n} utterances of `{lset}`, divided by "
    "the reference's sum measured in the same run, models interleaved round-robin. "
    "**decode RTF**: wall time of ESPnet's `Speech2Text` on the same features (encoder + "
    "beam search, options of `{inf}`; median of {dreps} decode(s) per utterance after one "
    "warm-up decode, summed) / audio duration (frames / {fps:g}), with ESPnet's own "
    "Transformer decoder, CTC prefix scorer and batch beam search (**ESPnet decoder**; for a "
    "`pruned_transformer` decoder, ESPnet's incremental algorithm on its layers) and with the "
    "fast exact decode that the recipe decodes with (**fast decoder**, "
    "`espnet_prune.fast_decoding`: same hypotheses; encoder keys/values computed once per "
    "utterance, CTC prefix scores without ESPnet's Python loop over frames, the search step "
    "vectorised and stopped once the 1-best is decided), all interleaved in one run; **RTF ratio** is "
    "the fast-decoder RTF (ESPnet's when the fast decoder is off) over the reference's, "
    "**fast / ESPnet** the two decoders' time ratio per model. Absolute times depend on the "
    "machine and its load; compare ratios."
)


def format_markdown(r: Dict[str, Any]) -> str:
    """The whole RESULTS.md."""
    L = header(r) + summary(r) + evidence.paired_section(r) + seed_spread(r) + training_cost(r)
    L += sparsity(r) + timing(r)
    L += evidence.plots_section(r) + wer_tables(r)
    return "\n".join(L)


def header(r: Dict[str, Any]) -> List[str]:
    """Environment, definitions and timing inputs."""
    env, st = r["environment"], r["settings"]
    sec = st["macs_seconds"]
    L: List[str] = ["# RESULTS", "", "## Environments"]
    L += [f"- date: `{env['date']}`",
          f"- python version: `{env['python']}`",
          f"- espnet version: `espnet {env['espnet']}`",
          f"- pytorch version: `pytorch {env['torch']}`",
          f"- espnet_prune version: `{env['espnet_prune']}`"
          + (f" (git `{env['git']}`)" if env.get("git") else ""),
          f"- CPU: `{env['cpu']}`, {env['cpu_count']} cores; torch threads: {env['threads']}",
          f"- load average (1/5/15 min) before / after timing: "
          f"`{r['timing'].get('loadavg_before')}` / `{r['timing'].get('loadavg_after')}`",
          f"- command: `{r['command']}`", ""]
    L += ["## Definitions", "",
          DEFINITIONS.format(ref=st["reference_model"], decode=st["decode_name"], sec=sec,
                             fps=st["frames_per_second"], threads=st["threads"],
                             tok=st.get("macs_tokens", 40),
                             reps=st["latency_repeats"], n=len(r["timing"]["utterances"]),
                             lset=st["latency_set"], inf=st["inference_config"] or "defaults",
                             dreps=st["decode_repeats"])
          + latency_definition(r) + " " + evidence.definitions(r), ""]
    tu = r["timing"]
    if tu["utterances"]:
        L += [f"Timing inputs: {len(tu['utterances'])} utterances of `{tu['set']}`, "
              f"{sum(tu['frames'])} {tu.get('input_unit', 'frames')} = {tu['audio_seconds']:.2f} s of audio; "
              "every timed call reads its own copy of the input"
              + ({True: "; every repeat of a decode gave the same hypotheses",
                  False: "; **repeats of a decode gave different hypotheses: timings suspect**"}
                 .get(tu.get("decode_repeatable"), "") + "."), ""]
    return L


def latency_definition(r: Dict[str, Any]) -> str:
    """The decode cost's definition, when the report priced the models with a latency table."""
    st = r["settings"]
    if not st.get("latency_table"):
        return ""
    return (" **decode cost ratio**: one decode's seconds predicted by the latency table "
            f"`{st['latency_table']}` (`espnet_prune.cost.latency`: per encoder MAC and kept "
            "encoder module, per decoder MAC and kept decoder sublayer and step, per search step; "
            "measured once on random structures by `python -m espnet_prune.bin.latency`, at the "
            "utterance length and decoder steps it was measured with), over the reference's; "
            "compare it with the measured **RTF ratio**.")


def summary(r: Dict[str, Any]) -> List[str]:
    """One row per model: WER with intervals, size, cost and timing ratios."""
    st, rows = r["settings"], r["models"]
    sets, sec = st["test_sets"], st["macs_seconds"]
    head = (["model"] + [f"WER {s}" for s in sets]
            + ["params (M)", "params ratio", "enc params (M)", f"enc MACs@{sec:g}s (G)",
               "MACs ratio", "dec MACs/token ratio", "inference MACs ratio", "enc latency ratio",
               "decode RTF (ESPnet decoder)", "decode RTF (fast decoder)", "RTF ratio"])
    priced = any("decode_cost_ratio" in m for m in rows)
    if priced:
        head.insert(len(head) - 1, "decode cost ratio")
    trained = r.get("training") or {}
    if trained:
        head.append("training CPU h (own + teacher)")
    L = ["## Summary", ""] + evidence.markdown_head(head)
    for m in rows:
        lat, dec = m.get("encoder_latency") or {}, m.get("decode") or {}
        esp = m.get("decode_espnet") or {}
        fast_rtf = dec.get("rtf") if dec.get("decoder") == "fast" else None
        cells = ([evidence.cell(m["name"])] + [evidence.wer_cell(m["wer"][s]) for s in sets]
                 + [fmt(m["params"]["total"] / 1e6, ".2f"), fmt(m["params_ratio"], ".3f"),
                    fmt(m["params"]["encoder"] / 1e6, ".2f"), fmt(m["encoder_macs"] / 1e9, ".3f"),
                    fmt(m["macs_ratio"], ".3f"), fmt(m.get("decoder_token_macs_ratio"), ".3f"),
                    fmt(m.get("inference_macs_ratio"), ".3f"), fmt(lat.get("ratio"), ".3f"),
                    fmt(esp.get("rtf"), ".3g"), fmt(fast_rtf, ".3g"), fmt(dec.get("ratio"), ".3f")])
        if priced:
            cells.insert(len(cells) - 1, fmt(m.get("decode_cost_ratio"), ".3f"))
        if trained:
            cells.append(training_cell(trained.get(m["name"])))
        L.append(evidence.markdown_row(cells))
    pub = r.get("published")
    if pub:
        cells = ([evidence.cell(f"{pub['label']} (published, not reproduced here)")]
                 + [fmt(pub["wer"][s]["Err"], ".1f") if s in pub["wer"] else "-" for s in sets]
                 + ["-"] * 11)
        L.append(evidence.markdown_row(cells))
        L += ["", f"Published reference ({pub['source']}): "
              + ", ".join(f"{s} {v['Err']:.1f}" for s, v in pub["wer"].items())
              + " WER; not reproduced here" + (
                  "" if pub["matched_sets"] else
                  " (none of --test_sets is named like these sets, so no cell is filled)") + "."]
    L.append("")
    return L


def seed_spread(r: Dict[str, Any]) -> List[str]:
    """Each seed group's WERs and spread, and the groups' differences against the spread."""
    sd = r.get("seeds")
    if not sd:
        return []
    sets = r["settings"]["test_sets"]
    L = ["## Training seeds", "",
         "The same model trained with other seeds (same teacher, data and config): each seed's "
         "WER, their mean, sample standard deviation and range (max - min), in WER points. The "
         "bootstrap intervals above cover the test set's sampling only; this is the training's "
         "own spread.", ""]
    L += evidence.markdown_head(["model (seeds)", "set", "WER per seed", "mean", "sd", "range"])
    for name, g in sd["groups"].items():
        for s in sets:
            v = g["sets"][s]
            L.append(evidence.markdown_row([
                evidence.cell(f"{name} ({', '.join(g['members'])})"), s,
                " / ".join(f"{w:.1f}" for w in v["wers"]), f"{v['mean']:.2f}", f"{v['sd']:.2f}",
                f"{v['range']:.1f}"]))
    L.append("")
    if sd["pairs"]:
        by_name = {m["name"]: m for m in r["models"]}
        L += ["Pairs of seed groups: the difference of the mean WERs, the paired bootstrap of "
              "the first seeds, and whether the difference exceeds the seed spread (every seed of "
              "one model has a lower WER than every seed of the other).", ""]
        L += evidence.markdown_head(["model", "other", "set", "mean ΔWER (model - other)",
                                     "ΔWER, first seeds [CI]", "P(model better), first seeds",
                                     "exceeds seed spread"])
        for p in sd["pairs"]:
            for s in sets:
                c = p["sets"][s]
                paired = (by_name[p["model"]].get("paired") or {}).get(s, {}).get("vs", {}).get(p["other"])
                L.append(evidence.markdown_row(
                    [evidence.cell(p["model"]), evidence.cell(p["other"]), s, f"{c['mean_delta']:+.2f}"]
                    + evidence.cmp_cells(paired) + ["**yes**" if c["exceeds_spread"] else "no"]))
        L.append("")
    return L


def _hours(seconds: Optional[float]) -> str:
    return fmt(None if seconds is None else seconds / 3600, ".2f")


def training_cell(c: Optional[Dict[str, Any]]) -> str:
    """``"0.50 + 2.00"`` (own + the teacher's CPU hours), ``"2.00"``, or ``-``."""
    if c is None:
        return "-"
    return _hours(c["cpu_s"]) + (f" + {_hours(c.get('teacher_cpu_s'))}" if c["from_teacher"] else "")


def training_cost(r: Dict[str, Any]) -> List[str]:
    """Each model's training: epochs, stopping, CPU hours, the teacher's share."""
    tc = r.get("training")
    if not tc:
        return []
    ref = r["settings"]["reference_model"]
    L = ["## Training cost", "",
         "Epochs and CPU time (user + system, hours; `train_cost.json` of each training dir) of "
         f"each model's own training runs; a model that starts from the teacher `{ref}` also "
         "costs the teacher's training (**+ teacher**). **stopped by**: ESPnet's `patience` "
         "(no better validation accuracy for that many epochs: converged by the config's "
         "criterion) or `max_epoch`.", ""]
    if ref in tc and not any(run["early_stopped"] for run in tc[ref]["runs"]):
        L += [f"**The teacher `{ref}` is not trained to convergence** (it stopped at `max_epoch`): "
              "every model that starts from it inherits its short schedule; `make compare` trains "
              "one to convergence.", ""]
    L += evidence.markdown_head(["model", "training runs (epochs, stopped by)", "epochs",
                                 "CPU h", "+ teacher CPU h", "total CPU h"])

    for name, c in tc.items():
        runs = ", ".join(f"`{run['dir']}` ({run['epochs']}, "
                         f"{'patience' if run['early_stopped'] else 'max_epoch'})" for run in c["runs"])
        L.append(evidence.markdown_row([
            evidence.cell(name), evidence.cell(runs), str(c["epochs"]), _hours(c["cpu_s"]),
            _hours(c.get("teacher_cpu_s")) if c["from_teacher"] else "-", _hours(c["total_cpu_s"])]))
    L.append("")
    return L


def sparsity(r: Dict[str, Any]) -> List[str]:
    """Absolute sizes and costs, and sparsity against the reference."""
    L = ["## Size and sparsity (1 - cost / reference cost)", "",
         "| model | encoder | params | enc params | block params | enc MACs | block MACs "
         "| params sparsity (whole model) | params sparsity (encoder) | params sparsity (blocks) "
         "| MACs sparsity (encoder) | MACs sparsity (blocks) |",
         "|" + "---|" * 12]
    for m in r["models"]:
        sp = m["sparsity"]
        L.append(evidence.markdown_row([
            evidence.cell(m["name"]), m["encoder"], f"{m['params']['total']:,}",
            f"{m['params']['encoder']:,}", f"{m['block_params']:,}", f"{m['encoder_macs']:,}",
            f"{m['block_macs']:,}", fmt(sp["params_whole_model"], ".3f"),
            fmt(sp["params_encoder"], ".3f"), fmt(sp["params_blocks"], ".3f"),
            fmt(sp["macs_encoder"], ".3f"), fmt(sp["macs_blocks"], ".3f")]))
    L.append("")
    return L


def timing(r: Dict[str, Any]) -> List[str]:
    """Encoder and decode times of every model, measured in one run (empty without timing)."""
    L: List[str] = []
    if r["timing"]["utterances"]:
        L += ["## Timing (same run, interleaved)", "",
              "| model | enc time (ms, sum of medians) | enc latency ratio | median per-utt ratio "
              "| decode time, ESPnet decoder (s) | decode RTF, ESPnet decoder "
              "| decode time, fast decoder (s) | decode RTF, fast decoder | fast / ESPnet "
              "| same hypotheses | RTF ratio |",
              "|" + "---|" * 11]
        for m in r["models"]:
            lat, dec = m.get("encoder_latency") or {}, m.get("decode") or {}
            esp = m.get("decode_espnet") or {}
            fast = dec if dec.get("decoder") == "fast" else {}
            same = m.get("fast_decoder_same_hyps")
            L.append(evidence.markdown_row([
                evidence.cell(m["name"]), fmt(lat["total_s"] * 1e3 if "total_s" in lat else None, ".2f"),
                fmt(lat.get("ratio"), ".3f"), fmt(lat.get("ratio_median_utt"), ".3f"),
                fmt(esp.get("total_s"), ".3f"), fmt(esp.get("rtf"), ".3g"),
                fmt(fast.get("total_s"), ".3f"), fmt(fast.get("rtf"), ".3g"),
                fmt(m.get("fast_decoder_ratio"), ".3f"),
                "-" if same is None else ("yes" if same else "**no**"),
                fmt(dec.get("ratio"), ".3f")]))
        L.append("")
    return L


def wer_tables(r: Dict[str, Any]) -> List[str]:
    """Per model, ESPnet's WER table."""
    L: List[str] = []
    st = r["settings"]
    for m in r["models"]:
        L += [f"## {m['name']}: `{m['dir']}`", "", "### WER", "",
              "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|", "|---|---|---|---|---|---|---|---|---|"]
        for s in st["test_sets"]:
            w = m["wer"][s]
            L.append(f"|{st['decode_name']}_{s}|{w['Snt']}|{w['Wrd']}|" + "|".join(
                f"{w[k]:.1f}" for k in ("Corr", "Sub", "Del", "Ins", "Err", "S.Err")) + "|")
        L.append("")
    return L
