"""Plots and widgets shared by the chapters: each interactive view has a static matplotlib fallback.

Chapters add their helpers here, each under a comment header naming the chapter.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["heatmap", "plot_losses", "plot_attention_grid", "attention_viewer"]


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


# --- Chapter 2: attention weights ----------------------------------------------------------------------------------


def _attention_stack(weights):
    """Weights as a float ndarray ``(layers, heads, T, T_k)`` from a tensor/array of 2, 3 or 4 dims or a list of
    per-layer ``(heads, T, T_k)`` (a leading batch dimension of size 1 is dropped)."""
    if isinstance(weights, (list, tuple)):
        weights = [w.detach().float().cpu().numpy() if hasattr(w, "detach") else np.asarray(w, dtype=float)
                   for w in weights]
        weights = [w[0] if w.ndim == 4 and w.shape[0] == 1 else w for w in weights]
        data = np.stack(weights)
    else:
        data = weights.detach().float().cpu().numpy() if hasattr(weights, "detach") else np.asarray(weights, float)
    while data.ndim < 4:
        data = data[None]
    if data.ndim != 4:
        raise ValueError(f"attention weights must be (T, T_k), (heads, T, T_k) or (layers, heads, T, T_k); "
                         f"got shape {data.shape}")
    return data


def plot_attention_grid(weights, tokens=None, title: str | None = None, max_heads: int = 8, cell: float = 2.2):
    """Static view of attention: one heatmap per (layer, head), queries as rows, keys as columns.

    ``weights``: ``(layers, heads, T, T_k)``, a list of per-layer ``(heads, T, T_k)``, or fewer dims.
    ``tokens``: labels for the positions (shown when there are at most 16). Returns the figure.
    """
    data = _attention_stack(weights)
    n_layers, n_heads = data.shape[0], min(data.shape[1], max_heads)
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(cell * n_heads + 0.5, cell * n_layers + 0.3),
                             squeeze=False)
    show_labels = tokens is not None and len(tokens) <= 16
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer, head]
            ax.imshow(data[layer, head], cmap="viridis", vmin=0, vmax=1, aspect="auto")
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            if show_labels and layer == n_layers - 1:
                ax.set_xticks(range(data.shape[3]), labels=list(tokens)[-data.shape[3]:], rotation=90, fontsize=6)
            else:
                ax.set_xticks([])
            if show_labels and head == 0:
                ax.set_yticks(range(data.shape[2]), labels=list(tokens)[-data.shape[2]:], fontsize=6)
            else:
                ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def attention_viewer(weights, tokens=None):
    """Interactive view: pick a layer, a head and a query position; see that head's weights as a heatmap (the
    chosen query's row framed in red) and the chosen query's weights over the keys as bars.

    Needs ipywidgets in a live kernel; returns the widget (display it, or leave it as a cell's last value). A
    static page cannot run the callbacks, so show :func:`plot_attention_grid` next to it as the fallback.
    """
    import ipywidgets as widgets
    from IPython.display import display

    data = _attention_stack(weights)
    n_layers, n_heads, t, t_k = data.shape
    labels = list(tokens) if tokens is not None else [str(i) for i in range(t_k)]
    layer = widgets.Dropdown(options=list(range(n_layers)), value=n_layers - 1, description="layer")
    head = widgets.IntSlider(0, 0, n_heads - 1, description="head")
    pos = widgets.IntSlider(t - 1, 0, t - 1, description="query pos")
    out = widgets.Output()

    def draw(*_):
        with out:
            out.clear_output(wait=True)
            w = data[layer.value, head.value]
            fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 1.3]})
            ax1.imshow(w, cmap="viridis", vmin=0, vmax=1, aspect="auto")
            ax1.add_patch(plt.Rectangle((-0.5, pos.value - 0.5), t_k, 1, fill=False, edgecolor="red", lw=2))
            ax1.set_title(f"layer {layer.value}, head {head.value}: rows = queries")
            ax1.set_xlabel("key position")
            ax1.set_ylabel("query position")
            ax2.bar(range(t_k), w[pos.value])
            ax2.set_xticks(range(t_k), labels=labels[-t_k:], rotation=90, fontsize=7)
            ax2.set_ylim(0, 1)
            ax2.set_title(f"what {labels[-t:][pos.value]!r} (position {pos.value}) attends to")
            fig.tight_layout()
            display(fig)  # into the Output widget; closing keeps the inline backend from drawing it twice
            plt.close(fig)

    for control in (layer, head, pos):
        control.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([layer, head, pos]), out])
