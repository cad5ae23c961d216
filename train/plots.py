"""Training figures: curves (loss, accuracy or MAE, learning rate per epoch) and the confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kerasport.fsutil import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rows: list[dict], task: str, destination: Path, shipped_epoch: int | None = None) -> None:
    """Loss, the task's metric and the learning rate per epoch; a dashed line marks the epoch whose weights
    shipped (`shipped_epoch`, 0-based) when that is not the last one (`--restore-best`)."""
    plt = _pyplot()
    metric = "accuracy" if task == "classification" else "mae"
    epochs = [int(row.get("epoch", index)) + 1 for index, row in enumerate(rows)]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for axis, key, title in ((axes[0], "loss", "loss"), (axes[1], metric, metric)):
        axis.plot(epochs, [row.get(key, np.nan) for row in rows], marker="o", label="train")
        axis.plot(epochs, [row.get(f"val_{key}", np.nan) for row in rows], marker="o", label="validation")
        axis.set(title=title, xlabel="epoch")
        if key == "loss" and all(row.get("loss", 0) > 0 for row in rows):
            axis.set_yscale("log")  # the first epoch's loss would otherwise flatten the rest
        if shipped_epoch is not None and epochs and shipped_epoch + 1 != epochs[-1]:
            axis.axvline(shipped_epoch + 1, color="gray", linestyle="--", label=f"shipped (epoch {shipped_epoch + 1})")
        axis.legend()
        axis.grid(alpha=0.3)
    axes[2].plot(epochs, [row.get("learning_rate", np.nan) for row in rows], marker="o", color="tab:green")
    axes[2].set(title="learning rate", xlabel="epoch", yscale="log")
    axes[2].grid(alpha=0.3)
    # fixed margins: tight_layout measures every label first and costs 0.17 s of the 0.4 s this plot takes
    figure.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.91, wspace=0.22)
    with atomic_path(destination, suffix=".png") as temp:
        figure.savefig(temp, dpi=110, format="png")
    plt.close(figure)


def plot_confusion(confusion: np.ndarray, labels: list[str], destination: Path) -> None:
    plt = _pyplot()
    size = max(4.0, 0.45 * len(labels) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(confusion, cmap="Blues")
    axis.set(xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted", ylabel="true",
             title="confusion matrix (held-out test split)")
    axis.set_xticklabels(labels, rotation=45, ha="right")
    axis.set_yticklabels(labels)
    threshold = confusion.max() / 2 if confusion.size else 0
    for (row, column), count in np.ndenumerate(confusion):
        axis.text(column, row, str(count), ha="center", va="center", fontsize=8,
                  color="white" if count > threshold else "black")
    figure.tight_layout()
    with atomic_path(destination, suffix=".png") as temp:
        figure.savefig(temp, dpi=110, format="png")
    plt.close(figure)
