"""The recipe's figures (PNG, matplotlib's Agg renderer, no display needed).

* :func:`plot_kept_structure`: heat map of what one pruned model kept, as a fraction of
  the dense sizes, per front-end Conv2d, encoder block (FFN1 units, MHA heads, conv
  channels, FFN2 units) and decoder layer (self / source heads, FFN units); each cell is
  annotated ``kept/dense``, ``removed`` when the whole module is gone
  (:mod:`espnet_prune.recipe.kept`).
* :func:`plot_training_curves`: expected sparsity against the target, lambda1 and lambda2
  against the training step, one line per pruning run (:mod:`espnet_prune.recipe.trainlog`).
* :func:`plot_validation_accuracy`: validation accuracy against the epoch of the runs
  trained from scratch (the teacher, same-size scratch models): converged or not.
* :func:`plot_wer_vs_params`: WER against whole-model parameters, one point per model
  and test set, error bars the bootstrap confidence interval (:mod:`espnet_prune.recipe.stats`).

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot state) and written
with :func:`espnet_prune.fileio.atomic_write_bytes`: a reader sees the old PNG or the new
complete one.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from espnet_prune.fileio import atomic_write_bytes
from espnet_prune.recipe.kept import DECODER_COLUMNS, ENCODER_COLUMNS, KeptStructure, row_labels
from espnet_prune.recipe.trainlog import TrainCurve

PathLike = Union[str, "os.PathLike[str]"]

#: First bytes of every PNG file.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: PathLike) -> None:
    """Render ``fig`` to PNG and write it to ``path`` atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------- structure


def _heat_panel(ax, kept: np.ndarray, dense: np.ndarray, rows: Sequence[str],
                cols: Sequence[str], title: str):
    frac = np.where(dense > 0, kept / np.maximum(dense, 1), np.nan)
    cmap = _cmap()
    im = ax.imshow(np.ma.masked_invalid(frac), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(cols)), labels=cols)
    ax.set_yticks(range(len(rows)), labels=rows)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title(title, fontsize=9)
    for i in range(frac.shape[0]):
        for j in range(frac.shape[1]):
            if dense[i, j] == 0:
                text, color = "n/a", "black"
            elif kept[i, j] == 0:
                text, color = "removed", "white"
            else:
                text = f"{kept[i, j]}/{dense[i, j]}"
                color = "black" if frac[i, j] > 0.6 else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    return im


def _cmap():
    import matplotlib

    return matplotlib.colormaps["viridis"].with_extremes(bad="lightgray")


def plot_kept_structure(name: str, kept: KeptStructure, path: PathLike) -> None:
    """Heat map of the fractions ``kept`` holds (see the module docstring)."""
    fe_rows, enc_rows, dec_rows = row_labels(kept)
    panels = []
    if len(fe_rows):
        panels.append((kept.frontend_kept[None, :], kept.frontend_dense[None, :], ["channels"],
                       fe_rows, "front end: output channels per Conv2d"))
    panels.append((kept.encoder_kept, kept.encoder_dense, enc_rows,
                   [c for c, _ in ENCODER_COLUMNS], "encoder blocks"))
    if len(dec_rows):
        panels.append((kept.decoder_kept, kept.decoder_dense, dec_rows,
                       [c for c, _ in DECODER_COLUMNS], "decoder layers"))
    heights = [max(1, p[0].shape[0]) + 1.2 for p in panels]
    fig = _figure(6.4, 0.42 * sum(heights) + 1.0)
    axes = fig.subplots(len(panels), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)
    im = None
    for ax, (k, d, rows, cols, title) in zip(axes[:, 0], panels):
        im = _heat_panel(ax, k, d, rows, cols, title)
    fig.colorbar(im, ax=list(axes[:, 0]), label="fraction kept of the dense size", shrink=0.8)
    fig.suptitle(f"{name}: what was kept", fontsize=10)
    save_png(fig, path)


# --------------------------------------------------------------------------- training


def plot_training_curves(curves: Sequence[Tuple[str, TrainCurve]], path: PathLike) -> None:
    """Expected vs target sparsity, lambda1 and lambda2 (and, for a family, the gates' shift)
    against the training step.

    Keys missing from a run are left out of its panel; a panel no run has a key of (the
    multipliers of a family's run, the shift of a single target's) is not drawn.
    """
    panels = [("sparsity", (("expected_sparsity", "-", "expected"),
                            ("target_sparsity", "--", "target"))),
              ("lambda1", (("lambda1", "-", ""),)),
              ("lambda2", (("lambda2", "-", ""),)),
              ("gate shift (family)", (("gate_shift", "-", ""),))]
    panels = [p for p in panels if any(key in c.values for _, c in curves for key, _, _ in p[1])] or panels[:1]
    fig = _figure(7.0, 2.5 * len(panels))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    colors = [f"C{i % 10}" for i in range(len(curves))]
    for ax, (ylabel, series) in zip(axes, panels):
        for color, (name, c) in zip(colors, curves):
            for key, style, what in series:
                if key in c.values and np.isfinite(c.values[key]).any():
                    label = f"{name} {what}".strip()
                    ax.plot(c.steps, c.values[key], style, color=color, label=label,
                            marker="." if len(c.steps) < 60 else None)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7)
    approx = any(c.approximate_steps for _, c in curves)
    axes[-1].set_xlabel("training step (updates)" + (", some epochs estimated" if approx else ""))
    axes[0].set_title("pruning: " + ", ".join(name for name, _ in panels), fontsize=10)
    save_png(fig, path)


def plot_validation_accuracy(curves: Sequence[Tuple[str, Sequence[Sequence[float]]]],
                             path: PathLike) -> None:
    """Validation accuracy against the epoch, one line per training run ``(label, [[epoch,
    acc], ...])``: did the teacher and the models trained from scratch converge?"""
    fig = _figure(7.0, 3.5)
    ax = fig.subplots()
    for i, (label, points) in enumerate(curves):
        if points:
            e, acc = zip(*points)
            ax.plot(e, acc, "-", color=f"C{i % 10}", label=label, marker="." if len(e) < 60 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.grid(True, alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize=7)
    ax.set_title("trained from scratch: validation accuracy per epoch", fontsize=10)
    save_png(fig, path)


# --------------------------------------------------------------------------- WER vs size


@dataclass
class WerPoint:
    """One model on one test set.

    Attributes:
        model, test_set: names.
        params: whole-model parameters (count).
        wer: WER in percent; ci: (low, high) in percent (None: no error bar).
    """

    model: str
    test_set: str
    params: int
    wer: float
    ci: Union[Tuple[float, float], None] = None


#: Models drawn as one WER-size curve (per test set): the members of a family, fine-tuned and
#: as shrunk, and the separately pruned models; the line style of each curve.
SIZE_CURVES = (("family", re.compile(r"^family_[a-z_]+[0-9.]+$"), "-"),
               ("family, shrunk", re.compile(r"^family_[a-z_]+[0-9.]+_shrunk$"), ":"),
               ("pruned separately", re.compile(r"^prune_[a-z_]+[0-9.]+$"), "--"))


def size_curve(model: str) -> Optional[str]:
    """The :data:`SIZE_CURVES` curve ``model`` is drawn on, or None."""
    return next((curve for curve, pattern, _ in SIZE_CURVES if pattern.match(model)), None)


def plot_wer_vs_params(points: Sequence[WerPoint], path: PathLike,
                       ci_label: str = "95 % bootstrap CI") -> None:
    """WER (%) against whole-model parameters (millions), one series per test set (drawn
    side by side, 0.8 % of the x range apart), the last set's points labelled with their
    model; error bars = the confidence interval. Models of one :data:`SIZE_CURVES` kind
    (two or more of them) are joined by a line, sorted by size."""
    fig = _figure(7.0, 4.8)
    ax = fig.subplots()
    sets = list(dict.fromkeys(p.test_set for p in points))
    xs = [p.params / 1e6 for p in points]
    span = (max(xs) - min(xs)) if xs and max(xs) > min(xs) else (max(xs + [1.0]) or 1.0)
    for k, s in enumerate(sets):
        pts = [p for p in points if p.test_set == s]
        # sets side by side around each model's size (0.8 % of the x span apart)
        dodge = 0.008 * span * (k - (len(sets) - 1) / 2)
        x = np.array([p.params / 1e6 + dodge for p in pts])
        y = np.array([p.wer for p in pts])
        err = np.array([[p.wer - p.ci[0], p.ci[1] - p.wer] if p.ci is not None else [0.0, 0.0]
                        for p in pts]).T
        ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, color=f"C{k % 10}", label=s)
        for curve, _, style in SIZE_CURVES:
            on = sorted((xi, yi) for p, xi, yi in zip(pts, x, y) if size_curve(p.model) == curve)
            if len(on) >= 2:
                ax.plot(*zip(*on), style, color=f"C{k % 10}", linewidth=1,
                        label=f"{s}: {curve}")
        if k == len(sets) - 1:
            labels: dict = {}  # models at the same point share one label
            for p, xi, yi in zip(pts, x, y):
                labels.setdefault((xi, yi), []).append(p.model)
            for (xi, yi), names in labels.items():
                ax.annotate(", ".join(names), (xi, yi), textcoords="offset points",
                            xytext=(5, 4), fontsize=7)
    ax.set_xlabel("whole-model parameters (M)")
    ax.set_ylabel("WER (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(title="test set", fontsize=8)
    ax.set_title(f"WER against model size (error bars: {ci_label})", fontsize=10)
    save_png(fig, path)
