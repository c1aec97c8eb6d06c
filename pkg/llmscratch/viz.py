"""Plots and widgets shared by the chapters: each interactive view has a static matplotlib fallback.

Chapters add their helpers here, each under a comment header naming the chapter.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["heatmap", "plot_losses"]


def heatmap(matrix, xlabels=None, ylabels=None, title: str | None = None, ax=None, cmap: str = "viridis",
            colorbar: bool = True, fmt: str | None = None):
    """Draw a 2-D array (tensor or ndarray) as a heatmap; optional tick labels and cell annotations (``fmt``)."""
    data = matrix.detach().float().cpu().numpy() if hasattr(matrix, "detach") else np.asarray(matrix, dtype=float)
    if data.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D matrix, got shape {data.shape}")
    if ax is None:
        _, ax = plt.subplots(figsize=(min(12, 1 + 0.5 * data.shape[1]), min(10, 1 + 0.45 * data.shape[0])))
    im = ax.imshow(data, cmap=cmap, aspect="auto")
    if xlabels is not None:
        ax.set_xticks(range(len(xlabels)), labels=list(xlabels), rotation=90)
    if ylabels is not None:
        ax.set_yticks(range(len(ylabels)), labels=list(ylabels))
    if fmt is not None:
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                ax.text(j, i, format(data[i, j], fmt), ha="center", va="center", fontsize=7, color="w")
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax)
    return ax


def plot_losses(train_losses, val_losses=None, steps=None, xlabel: str = "step", ax=None, title: str | None = None):
    """Training (and validation) loss curves against steps (or tokens seen)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    x = steps if steps is not None else range(len(train_losses))
    ax.plot(list(x), list(train_losses), label="train")
    if val_losses is not None:
        ax.plot(list(x), list(val_losses), label="validation", linestyle="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    ax.legend()
    return ax
