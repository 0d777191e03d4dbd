"""Confidence intervals, paired comparisons and plots of the recipe's RESULTS.md.

The report (:mod:`espnet_prune.recipe.report`) calls, in this order:

1. :func:`add_options` on its parser;
2. :func:`check_options` and :func:`read_statistics` before building any model: they
   check ``--control`` / ``--pair`` / ``--train_log`` and score every model per utterance from
   ``<model>/<decode_name>_<set>/score_wer/{ref,hyp}.trn`` (the files ``result.txt`` was
   scored from), checking that the totals equal ``result.txt``'s;
3. :func:`attach_statistics` on the finished rows (bootstrap CI per WER, paired
   bootstrap against the reference, the control model and the ``--pair`` models,
   per-utterance errors);
4. :func:`write_plots` (PNG files beside RESULTS.md, paths relative to it);
5. :func:`definitions`, :func:`wer_cell`, :func:`paired_section` and :func:`plots_section`
   when writing Markdown (its tables' rows: :func:`cell`, :func:`markdown_row`,
   :func:`markdown_head`).
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from espnet2.utils.types import str2bool

from espnet_prune.recipe import stats


#: How ties count, as stated in RESULTS.md and the JSON.
TIES = "a resample where both models make the same number of errors counts one half"


class EvidenceError(ValueError):
    """Bad statistics / plot input (the message names the option or file)."""



def add_options(p: argparse.ArgumentParser) -> None:
    """Statistics and plot options of the report."""
    g = p.add_argument_group("statistics and plots")
    g.add_argument("--control", default=None, metavar="NAME",
                   help="a --model name (e.g. the equal-budget dense control) every model is "
                        "also compared with by the paired bootstrap")
    g.add_argument("--pair", action="append", default=[], metavar="MODEL:OTHER",
                   help="also compare --model MODEL with --model OTHER by the paired "
                        "bootstrap (e.g. a pruned model with a same-size baseline; "
                        "repeatable)")
    g.add_argument("--bootstrap_samples", type=int, default=stats.N_RESAMPLES,
                   help="bootstrap replicates of the utterances (0: no intervals or paired "
                        "comparisons)")
    g.add_argument("--bootstrap_seed", type=int, default=0, help="seed of the replicates")
    g.add_argument("--confidence", type=float, default=0.95,
                   help="confidence level of the percentile intervals")
    g.add_argument("--plots", type=str2bool, default=True, help="write the PNG figures")
    g.add_argument("--plots_dir", default=None,
                   help="where the PNGs go (default: the directory of --output)")
    g.add_argument("--train_log", action="append", default=[], metavar="NAME=PATH",
                   help="a pruning run's ESPnet train.log for the training-curve figure "
                        "(repeatable)")


def check_options(a: argparse.Namespace, model_names: Sequence[str]) -> None:
    """Raise :class:`EvidenceError` for a bad ``--control`` / bootstrap / log option."""
    from espnet_prune.recipe.trainlog import parse_named_logs

    if a.control is not None and a.control not in model_names:
        raise EvidenceError(f"--control {a.control!r} is not one of the --model names "
                            f"{list(model_names)}")
    parse_pairs(a.pair, model_names)
    if a.bootstrap_samples < 0:
        raise EvidenceError(f"--bootstrap_samples must be >= 0, got {a.bootstrap_samples}")
    if not 0 < a.confidence < 1:
        raise EvidenceError(f"--confidence must be in (0, 1), got {a.confidence}")
    try:
        parse_named_logs(a.train_log)
    except (ValueError, FileNotFoundError) as e:
        raise EvidenceError(str(e)) from None


def parse_pairs(values: Sequence[str], model_names: Sequence[str]) -> List[Tuple[str, str]]:
    """``["a:b", ...]`` (``--pair``) -> ``[("a", "b"), ...]``, each a pair of two different
    ``--model`` names, no pair twice; raises :class:`EvidenceError` naming the value."""
    pairs: List[Tuple[str, str]] = []
    for v in values:
        a, sep, b = v.partition(":")
        if not sep or not a or not b:
            raise EvidenceError(f"--pair {v!r}: expected MODEL:OTHER")
        for n in (a, b):
            if n not in model_names:
                raise EvidenceError(f"--pair {v!r}: {n!r} is not one of the --model names "
                                    f"{list(model_names)}")
        if a == b:
            raise EvidenceError(f"--pair {v!r}: a model compared with itself")
        if (a, b) in pairs:
            raise EvidenceError(f"--pair {v!r} is given twice")
        pairs.append((a, b))
    return pairs


# --------------------------------------------------------------------------- statistics


def score_dir(model_dir: Path, decode_name: str, test_set: str) -> Path:
    return Path(model_dir) / f"{decode_name}_{test_set}" / "score_wer"


def read_statistics(a: argparse.Namespace, models: Sequence[Tuple[str, Path]],
                    wers: Dict[str, Dict[str, Dict[str, Any]]]
                    ) -> Dict[str, Dict[str, stats.UtteranceErrors]]:
    """Per-utterance errors of every model on every set (``{set: {model: errors}}``);
    empty with ``--bootstrap_samples 0``.

    Raises:
        EvidenceError: a trn file is missing, models were scored on different
            utterances, or the totals differ from ``result.txt``'s (``wers``, from
            :func:`espnet_prune.recipe.report.read_wer`).
    """
    if a.bootstrap_samples == 0:
        return {}
    out: Dict[str, Dict[str, stats.UtteranceErrors]] = {}
    for s in a.test_sets:
        out[s] = {}
        for name, d in models:
            sd = score_dir(d, a.decode_name, s)
            try:
                u = stats.utterance_errors(sd / "ref.trn", sd / "hyp.trn", fmt="trn")
            except (ValueError, FileNotFoundError) as e:
                raise EvidenceError(f"--model {name}, set {s}: {e} (--bootstrap_samples 0 "
                                    "skips the statistics)") from None
            _check_totals(name, s, u, wers[name][s])
            out[s][name] = u
        first = models[0][0]
        for name, _ in models[1:]:
            try:
                stats.check_same_utterances(first, out[s][first], name, out[s][name])
            except ValueError as e:
                raise EvidenceError(f"set {s}: {e}") from None
    return out


def _check_totals(name: str, test_set: str, u: stats.UtteranceErrors,
                  w: Dict[str, Any]) -> None:
    c = w.get("counts")
    where = f"--model {name}, set {test_set}: {w['path']}"
    if c is not None:
        if (c["Err"], c["Wrd"]) != (u.total_errors, u.total_words):
            raise EvidenceError(
                f"{where} counts {c['Err']} errors / {c['Wrd']} words, its ref.trn / hyp.trn "
                f"align to {u.total_errors} / {u.total_words}: the files are out of date")
    elif w["Wrd"] != u.total_words or abs(w["Err"] - u.wer) > 0.05 + 1e-9:
        raise EvidenceError(f"{where} says {w['Err']} % of {w['Wrd']} words, its ref.trn / "
                            f"hyp.trn align to {u.wer:.2f} % of {u.total_words}")


def attach_statistics(a: argparse.Namespace, rows: List[Dict[str, Any]],
                      per_set: Dict[str, Dict[str, stats.UtteranceErrors]]) -> Dict[str, Any]:
    """Add ``wer[set]["ci"]``, ``wer[set]["utt_errors"]`` and ``paired[set]`` to every row.

    Returns the report's ``statistics`` section (settings, utterance ids and reference
    words per set), or ``{"enabled": False}``.
    """
    if not per_set:
        return {"enabled": False}
    alpha = 1 - a.confidence
    reference = rows[0]["name"]
    pairs = parse_pairs(a.pair, [r["name"] for r in rows])
    sets: Dict[str, Any] = {}
    for s, systems in per_set.items():
        summary = stats.summarize(systems, reference=reference, control=a.control,
                                  n_resamples=a.bootstrap_samples, alpha=alpha,
                                  seed=a.bootstrap_seed, pairs=pairs)
        first = next(iter(systems.values()))
        sets[s] = {"utterances": first.utts, "words": first.words.tolist()}
        for r in rows:
            r["wer"][s]["ci"] = summary[r["name"]]["ci"]
            r["wer"][s]["utt_errors"] = systems[r["name"]].errors.tolist()
            r.setdefault("paired", {})[s] = {k: summary[r["name"]][k]
                                             for k in ("vs_reference", "vs_control", "vs")}
    return {"enabled": True, "n_resamples": a.bootstrap_samples, "seed": a.bootstrap_seed,
            "confidence": a.confidence, "reference": reference, "control": a.control,
            "pairs": [list(p) for p in pairs], "ties": TIES, "sets": sets}


# --------------------------------------------------------------------------- plots


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def write_plots(a: argparse.Namespace, report: Dict[str, Any]) -> Dict[str, Any]:
    """Write the figures; returns ``{"dir", "wer_vs_params", "structure": {model: path},
    "training_curves", "skipped": {what: why}}`` with paths relative to ``--output``'s
    directory (None when a figure is not drawn)."""
    if not a.plots:
        return {"enabled": False}
    from espnet_prune.recipe import plots
    from espnet_prune.recipe.kept import StructureError, load_kept_structure
    from espnet_prune.recipe.trainlog import PRUNING_KEYS, parse_named_logs, parse_train_log

    out_dir = Path(a.output).resolve().parent
    plot_dir = Path(a.plots_dir).resolve() if a.plots_dir else out_dir
    plot_dir.mkdir(parents=True, exist_ok=True)

    def rel(p: Path) -> str:
        return Path(os.path.relpath(p, out_dir)).as_posix()

    info: Dict[str, Any] = {"enabled": True, "dir": str(plot_dir), "wer_vs_params": None,
                            "structure": {}, "training_curves": None, "skipped": {}}
    rows, sets = report["models"], report["settings"]["test_sets"]
    points = [plots.WerPoint(r["name"], s, int(r["params"]["total"]), float(r["wer"][s]["wer"]),
                             tuple(r["wer"][s]["ci"]) if "ci" in r["wer"][s] else None)
              for r in rows for s in sets]
    path = plot_dir / "wer_vs_params.png"
    conf = report.get("statistics", {}).get("confidence")
    plots.plot_wer_vs_params(points, path, ci_label=(
        f"{100 * conf:g} % bootstrap CI" if conf else "none, --bootstrap_samples 0"))
    info["wer_vs_params"] = rel(path)
    for r in rows:
        try:
            kept = load_kept_structure(Path(r["dir"]) / "config.yaml")
        except StructureError as e:
            info["skipped"][f"structure of {r['name']}"] = str(e)
            continue
        r["kept"] = kept.to_dict()
        if not kept.pruned:
            continue
        path = plot_dir / f"structure_{_file_name(r['name'])}.png"
        plots.plot_kept_structure(r["name"], kept, path)
        info["structure"][r["name"]] = rel(path)
    curves = []
    for name, log in parse_named_logs(a.train_log):
        try:
            curves.append((name, parse_train_log(log)))
        except ValueError as e:  # e.g. a run too short to log an interval: no curve, said why
            info["skipped"][f"training curves of {name}"] = str(e)
    for name, c in curves:
        missing = [k for k in PRUNING_KEYS if k not in c.values]
        if missing:
            info["skipped"][f"training curves of {name}"] = (
                f"{c.path}: no {', '.join(missing)} (not a pruning run's log?)")
        if c.approximate_steps:
            info.setdefault("approximate_steps", []).append(name)
    scratch = [(f"{name} (stopped early)" if run["early_stopped"] else name, run["valid_acc"])
               for name, c in (report.get("training") or {}).items() if not c["from_teacher"]
               for run in c["runs"] if run["valid_acc"]]
    if scratch:
        path = plot_dir / "validation_accuracy.png"
        plots.plot_validation_accuracy(scratch, path)
        info["validation_accuracy"] = rel(path)
    if curves:
        path = plot_dir / "training_curves.png"
        plots.plot_training_curves(curves, path)
        info["training_curves"] = rel(path)
        info["training_logs"] = {name: c.path for name, c in curves}
    return info


# --------------------------------------------------------------------------- Markdown


def definitions(report: Dict[str, Any]) -> str:
    """Sentences for the Definitions paragraph."""
    st = report.get("statistics") or {}
    if not st.get("enabled"):
        return ("No confidence intervals (`--bootstrap_samples 0`).")
    conf = f"{100 * st['confidence']:g} %"
    ctrl = f", vs the control `{st['control']}` (`--control`)" if st.get("control") else ""
    if st.get("pairs"):
        ctrl += ", and of each chosen pair's model vs its other model (`--pair`)"
    return (
        f"**[low, high]** after a WER: its {conf} bootstrap confidence interval, the "
        f"{100 * (1 - st['confidence']) / 2:g} % and {100 * (1 + st['confidence']) / 2:g} % "
        f"percentiles of the corpus WER (sum of errors / sum of reference words) over "
        f"{st['n_resamples']} resamples of the test set's utterances with replacement (seed "
        f"{st['seed']}; per-utterance errors from the scorer's alignment of "
        "`score_wer/{ref,hyp}.trn`, their sums equal `result.txt`'s). "
        "**Paired bootstrap** (Bisani and Ney, 2004): every model is scored on the same "
        f"resamples; **P(better)** vs the reference `{st['reference']}`{ctrl} is the fraction "
        f"of resamples in which the model makes fewer errors ({TIES}, so identical models get "
        "0.50); 0.95 or more (0.05 or less) is a reliable improvement (degradation). "
        f"**ΔWER** = WER(model) - WER(other) in absolute points, with the {conf} interval of "
        "the difference over the same resamples.")


def wer_cell(wer: Dict[str, Any]) -> str:
    """``"9.4 [7.9, 11.0]"`` (the sclite-rounded WER and its interval) or ``"9.4"``."""
    ci = wer.get("ci")
    base = f"{wer['Err']:.1f}"
    return f"{base} [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else base


def cmp_cells(c: Optional[Dict[str, Any]]) -> List[str]:
    if c is None:
        return ["-", "-"]
    lo, hi = c["delta_ci"]
    return [f"{c['delta_wer']:+.2f} [{lo:+.2f}, {hi:+.2f}]", f"{c['p_improvement']:.3f}"]


def paired_section(report: Dict[str, Any]) -> List[str]:
    """The "Paired bootstrap" table (Markdown lines; none without statistics)."""
    L: List[str] = []
    st = report.get("statistics") or {}
    rows = report["models"]
    if st.get("enabled"):
        ref, ctrl = st["reference"], st.get("control")
        ctrl = None if ctrl == ref else ctrl  # the same columns twice otherwise
        head = ["model", "set", f"WER [{100 * st['confidence']:g} % CI]",
                f"ΔWER vs {ref}", f"P(better than {ref})"]
        if ctrl:
            head += [f"ΔWER vs {ctrl}", f"P(better than {ctrl})"]
        L += ["## Paired bootstrap", "",
              f"{st['n_resamples']} paired resamples of the utterances per set; see Definitions.",
              ""] + markdown_head(head)
        for s in report["settings"]["test_sets"]:
            for r in rows:
                pr = r["paired"][s]
                cells = [cell(r["name"]), cell(s), wer_cell(r["wer"][s])]
                cells += cmp_cells(pr["vs_reference"])
                if ctrl:
                    cells += cmp_cells(pr["vs_control"])
                L.append(markdown_row(cells))
        L.append("")
        L += _pairs_table(report)
    return L


def _pairs_table(report: Dict[str, Any]) -> List[str]:
    """The ``--pair`` comparisons: one row per pair and set (Markdown lines)."""
    st = report["statistics"]
    if not st.get("pairs"):
        return []
    by_name = {r["name"]: r for r in report["models"]}
    head = ["model", "other", "set", "WER model", "WER other", "ΔWER (model - other)",
            "P(model better)"]
    L = ["### Chosen pairs (`--pair`)", "",
         "Same resamples as above; P(model better) near 1 (0) means the model is reliably "
         "better (worse) than the other.", ""] + markdown_head(head)
    for a, b in st["pairs"]:
        for s in report["settings"]["test_sets"]:
            cells = [cell(a), cell(b), cell(s), wer_cell(by_name[a]["wer"][s]),
                     wer_cell(by_name[b]["wer"][s])]
            L.append(markdown_row(cells + cmp_cells(by_name[a]["paired"][s]["vs"][b])))
    return L + [""]


def plots_section(report: Dict[str, Any]) -> List[str]:
    """The "Plots" section: links relative to RESULTS.md (none without plots)."""
    L: List[str] = []
    pl = report.get("plots") or {}
    if pl.get("enabled"):
        L += ["## Plots", ""]
        if pl.get("wer_vs_params"):
            L += [f"![WER against whole-model parameters]({pl['wer_vs_params']})", ""]
        for name, p in pl.get("structure", {}).items():
            L += [f"What `{cell(name)}` kept, as a fraction of the dense sizes "
                  "(front-end Conv2d channels, encoder block modules, decoder layer sublayers):",
                  "", f"![{cell(name)}: kept structure]({p})", ""]
        if pl.get("training_curves"):
            logs = ", ".join(f"`{n}`: `{p}`" for n, p in pl.get("training_logs", {}).items())
            L += [f"Pruning runs' expected sparsity vs the target, and lambda1 / lambda2, "
                  f"against the training step ({logs}):", "",
                  f"![training curves]({pl['training_curves']})", ""]
        if pl.get("validation_accuracy"):
            L += ["Validation accuracy per epoch of every model trained from scratch (the "
                  "teacher, the same-size scratch models; \"stopped early\": by ESPnet's "
                  "`patience`, see Training cost):", "",
                  f"![validation accuracy per epoch]({pl['validation_accuracy']})", ""]
        for what, why in pl.get("skipped", {}).items():
            L.append(f"- no figure for {what}: {cell(why)}")
        if pl.get("skipped"):
            L.append("")
    return L


def cell(s: Any) -> str:
    """``s`` as a Markdown table cell (``|`` escaped)."""
    return str(s).replace("|", "\\|")


def markdown_row(cells: Iterable[str]) -> str:
    """One Markdown table row of already formatted ``cells``."""
    return "| " + " | ".join(cells) + " |"


def markdown_head(head: Sequence[str]) -> List[str]:
    """A Markdown table's header row (cells escaped) and its separator row."""
    return [markdown_row(cell(h) for h in head), "|" + "---|" * len(head)]
