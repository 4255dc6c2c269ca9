"""Figures logged with each run: sample predictions, training curves, confusion matrix."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rps.training.outcome import OBJECTIVE  # noqa: E402

RIGHT, WRONG = "tab:green", "tab:red"


def _image_grid(nrows: int, ncols: int, cell: tuple[float, float], title_lines: int, fontsize: float):
    """A figure of ``nrows`` x ``ncols`` image axes, ``cell`` inches each, with room for a
    suptitle and for titles of ``title_lines`` lines at ``fontsize`` above every row. The margins
    are fixed in inches: the constrained layout found the same ones but took ~0.2 s a figure, twice
    a run (2026-12-03)."""
    width, height = cell[0] * ncols, cell[1] * nrows
    title = (title_lines * 1.2 * fontsize + 8) / 72  # inches: the lines and matplotlib's padding
    top, edge = title + 0.35, 0.05  # the row titles plus the suptitle; the other edges
    axes_height = (height - top - edge - title * (nrows - 1)) / nrows
    axes_width = (width - 2 * edge - 0.1 * (ncols - 1)) / ncols
    layout = {"left": edge / width, "right": 1 - edge / width, "bottom": edge / height, "top": 1 - top / height,
              "hspace": title / axes_height, "wspace": 0.1 / axes_width}
    return plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, gridspec_kw=layout)


def sample_predictions(
    images: list[np.ndarray], labels: np.ndarray, probs: np.ndarray, class_names: list[str], ncols: int = 5
) -> Figure:
    """A grid of test images titled actual vs predicted (confidence); wrong ones in red."""
    nrows = max(1, math.ceil(len(images) / ncols))
    fig, axes = _image_grid(nrows, ncols, (3, 3.4), title_lines=2, fontsize=10)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label, p in zip(axes.flat, images, labels, probs):
        predicted = int(np.argmax(p))
        ok = predicted == int(label)
        ax.imshow(image)
        ax.set_title(
            f"actual: {class_names[label]}\npredicted: {class_names[predicted]} ({p[predicted]:.0%})"
            + ("" if ok else "  WRONG"),
            color=RIGHT if ok else WRONG,
            fontsize=10,
        )
        if not ok:
            for spine in ax.spines.values():
                spine.set(visible=True, color=WRONG, linewidth=4)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
    correct = sum(int(np.argmax(p)) == int(y) for p, y in zip(probs, labels))
    fig.suptitle(f"Sample test predictions: {correct}/{len(images)} correct")
    return fig


def training_curves(history: dict[str, list[float]]) -> Figure:
    """Accuracy and loss per epoch, train vs validation."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, what in zip(axes, ("accuracy", "loss")):
        for split in ("train", "val"):
            values = history.get(f"{split}_{what}", [])
            ax.plot(range(1, len(values) + 1), values, marker="o", label=split)
        ax.set(title=what, xlabel="epoch", ylabel=what)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def confusion_matrix(cm: np.ndarray, class_names: list[str]) -> Figure:
    """Counts of actual (rows) vs predicted (columns) classes."""
    size = 1.2 * len(class_names) + 2
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ticks = range(len(class_names))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=class_names, yticklabels=class_names,
           xlabel="predicted", ylabel="actual", title="Test confusion matrix")
    threshold = cm.max() / 2 if cm.size else 0
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def sweep_accuracy(table: list[dict], keys: list[str]) -> Figure:
    """Best validation and test accuracy against the first numeric swept key, a line per
    combination of the other swept keys (e.g. accuracy vs dropout, one line per learning rate)."""
    done = [row for row in table if row["status"] == "FINISHED" and row["test_accuracy"] is not None]
    numeric = [k for k in keys if done and all(_number(row[k]) is not None for row in done)]
    x_key = "head.dropout" if "head.dropout" in numeric else (numeric[0] if numeric else None)
    others = [k for k in keys if k != x_key]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
    for ax, (metric, title) in zip(axes.flat, ((OBJECTIVE, "validation accuracy (the objective)"),
                                                ("test_accuracy", "test accuracy"))):
        series: dict[str, list[tuple[float, float]]] = {}
        for i, row in enumerate(done):
            label = " ".join(f"{k.split('.')[-1]}={row[k]}" for k in others) or metric
            x = _number(row[x_key]) if x_key else float(i)
            series.setdefault(label, []).append((x, row[metric]))
        for label, points in sorted(series.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        ax.set(title=title, xlabel=x_key or "job", ylabel="accuracy")
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=8)
    failed = len(table) - len(done)
    fig.suptitle(f"Sweep: {len(done)} finished" + (f", {failed} failed (not plotted)" if failed else ""))
    fig.tight_layout()
    return fig


CHOSEN = "tab:green"


def comparison_sheet(rows: list[dict], class_names: list[str], title: str) -> Figure:
    """A sweep's children side by side, one row each in the given order: its test confusion
    matrix, then its predictions on the same first test images (green right, red wrong). A row is
    ``{"label", "objective", "chosen", "confusion", "thumbnails", "labels", "predicted", "confidence"}``;
    the chosen row is framed and says so."""
    n_samples = max((len(r["thumbnails"]) for r in rows), default=0)
    height = 1.0 + 1.9 * len(rows)
    layout = {"width_ratios": [2.2] + [1] * n_samples, "left": 0.05, "right": 0.99, "bottom": 0.04 / height * 10,
              "top": 1 - 1.0 / height, "hspace": 0.75, "wspace": 0.12}  # fixed: tight_layout takes seconds here
    fig, axes = plt.subplots(len(rows), 1 + n_samples, figsize=(2.6 + 1.25 * n_samples, height), squeeze=False,
                             gridspec_kw=layout)
    for ax in axes.flat:
        ax.axis("off")
    for row_axes, row in zip(axes, rows):
        _confusion_cell(row_axes[0], row, class_names)
        for ax, image, label, predicted, confidence in zip(row_axes[1:], row["thumbnails"], row["labels"],
                                                           row["predicted"], row["confidence"]):
            ok = predicted == label
            ax.imshow(image)
            ax.set_title(f"{class_names[predicted]} {confidence:.0%}", fontsize=8, color=RIGHT if ok else WRONG)
    fig.suptitle(title, fontsize=10)
    return fig


def _confusion_cell(ax, row: dict, class_names: list[str]) -> None:
    """One child's confusion matrix, titled with its swept values and objective (framed if chosen)."""
    cm = np.asarray(row["confusion"])
    ax.axis("on")
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(int(cm.sum(axis=1).max()), 1))
    ticks = range(len(class_names))
    ax.set_xticks(ticks, [c[:8] for c in class_names], fontsize=6)
    ax.set_yticks(ticks, [c[:8] for c in class_names], fontsize=6)
    threshold = cm.max() / 2 if cm.size else 0
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color="white" if count > threshold else "black")
    mark = "CHOSEN  " if row["chosen"] else ""
    ax.set_title(f"{mark}{row['label']}\n{OBJECTIVE} {row['objective']:.4f}", fontsize=8,
                 color=CHOSEN if row["chosen"] else "black", fontweight="bold" if row["chosen"] else "normal")
    for spine in ax.spines.values():
        spine.set(visible=True, color=CHOSEN if row["chosen"] else "lightgrey", linewidth=4 if row["chosen"] else 1)


def reliability_diagram(curves: dict[str, tuple[list[dict], float]]) -> Figure:
    """Accuracy against confidence per bin, one line per curve (e.g. validation, test, each before
    and after temperature scaling), the diagonal being perfect calibration; ECE in the legend."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="lightgrey", linestyle="--", label="perfectly calibrated")
    for name, (bins, ece) in curves.items():
        filled = [b for b in bins if b["count"]]
        ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], marker="o",
                label=f"{name} (ECE {ece:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence (mean of the bin)", ylabel="accuracy",
           title="Reliability diagram")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def error_gallery(rows: list[tuple[str, list[np.ndarray], np.ndarray, np.ndarray]], class_names: list[str]) -> Figure:
    """The worst mistakes, a row per split: ``(split, images, labels, probs)``, each image titled
    with its true class, the predicted class and both probabilities."""
    ncols = max([len(images) for _, images, _, _ in rows] + [1])
    fig, axes = _image_grid(len(rows), ncols, (2.4, 2.9), title_lines=2, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    for row_axes, (split, images, labels, probs) in zip(axes, rows):
        if not images:
            row_axes[0].text(0, 0.5, f"{split}: no mistakes", fontsize=10)
        for ax, image, label, p in zip(row_axes, images, labels, probs):
            predicted = int(np.argmax(p))
            ax.imshow(image)
            ax.set_title(f"{split}: true {class_names[label]} {p[label]:.0%}\npredicted {class_names[predicted]} "
                         f"{p[predicted]:.0%}", fontsize=8, color=WRONG)
    fig.suptitle("Worst mistakes (lowest probability on the true class)")
    return fig
