"""What a trained rating model learned about items, written at the end of a run.

Into ``<run>/interpretation/``: ``interpretation.json`` and ``interpretation.md`` (the items with the
lowest and highest learned bias, the items at both ends of the first principal components of the
item factors) and ``item_pca.png`` (the most-rated items placed by the first two components,
labelled with their titles). Into TensorBoard: the same text, the picture, and the item factors in
the embedding projector with titles as metadata. Only the most-rated items are ranked, as in
fastai's book: a rarely rated item's bias and factors say little.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from pytorch_lightning.loggers import TensorBoardLogger

from stagetune.atomic import write_atomic
from stagetune.figures import new_figure


def principal_components(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of the rows of ``x`` on its first ``k`` principal components, and their variance share."""
    centred = x - x.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    share = s**2 / max(float((s**2).sum()), 1e-12)
    return centred @ vt[:k].T, share[:k]


def ends(values: np.ndarray, names: list[str], n: int) -> dict[str, list]:
    """The ``n`` lowest and ``n`` highest entries of ``values``, as ``[name, value]`` pairs."""
    order = np.argsort(values, kind="stable")

    def pick(idx: np.ndarray) -> list:
        return [[names[k], round(float(values[k]), 4)] for k in idx]

    return {"lowest": pick(order[:n]), "highest": pick(order[::-1][:n])}


def interpret(
    item_factors: np.ndarray,
    item_bias: np.ndarray | None,
    names: list[str],
    counts: np.ndarray,
    top_items: int = 1000,
    n_show: int = 10,
    n_components: int = 3,
) -> tuple[dict, np.ndarray, list[str]]:
    """Rank the ``top_items`` most-rated items by bias and along the principal components.

    Returns the ranking, the items' principal-component coordinates and their names, most-rated first.
    """
    top = np.argsort(-counts, kind="stable")[: min(top_items, int((counts > 0).sum()))]
    top_names = [names[k] for k in top]
    coords, share = principal_components(item_factors[top], min(n_components, item_factors.shape[1]))
    result: dict = {"items_ranked": len(top)}
    if item_bias is not None:
        result["bias"] = ends(item_bias[top], top_names, n_show)
    result["components"] = [
        {"component": c + 1, "variance_share": round(float(share[c]), 4), **ends(coords[:, c], top_names, n_show)} for c in range(coords.shape[1])
    ]
    return result, coords, top_names


def as_markdown(result: dict) -> str:
    lines = [f"Ranked among the {result['items_ranked']} most-rated items.", ""]
    sections = []
    if "bias" in result:
        sections.append(("Learned item bias", result["bias"]))
    for comp in result["components"]:
        sections.append((f"Principal component {comp['component']} ({comp['variance_share']:.0%} of variance)", comp))
    for title, ranked in sections:
        lines += [f"## {title}", "", "| lowest | | highest | |", "|---|---|---|---|"]
        for (lo_name, lo), (hi_name, hi) in zip(ranked["lowest"], ranked["highest"]):
            lines.append(f"| {lo_name} | {lo:.3f} | {hi_name} | {hi:.3f} |")
        lines.append("")
    return "\n".join(lines)


LABEL_OFFSETS = ((5, 3), (5, -11), (-5, 3), (-5, -11), (0, 9), (0, -17), (11, -4), (-11, -4))  # points, around the dot


def place_labels(ax, x: np.ndarray, y: np.ndarray, names: list[str], n: int) -> int:
    """Label the first ``n`` points where the label overlaps no earlier label and stays inside the axes.

    Each label tries the positions of ``LABEL_OFFSETS`` in turn (measured by the Agg renderer) and
    is left out if none is free: a crowded centre keeps its dots, not a smear of titles. Returns
    how many labels were placed.
    """
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed: list = []
    for k in range(min(n, len(names))):
        for dx, dy in LABEL_OFFSETS:
            text = ax.annotate(names[k], (x[k], y[k]), xytext=(dx, dy), textcoords="offset points", fontsize=8, ha="left" if dx >= 0 else "right")
            box = text.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in placed):
                placed.append(box)
                ax.scatter(x[k], y[k], s=14, color="tab:red", zorder=3)
                break
            text.remove()
    return len(placed)


def pca_figure(coords: np.ndarray, share: np.ndarray, names: list[str], n_labels: int = 50) -> Figure:
    """Items placed by their first two components, each axis with its share of the variance.

    The ``n_labels`` most-rated items carry their titles where a title fits without overlapping another.
    """
    x = coords[:, 0]
    y = coords[:, 1] if coords.shape[1] > 1 else np.zeros(len(x))
    fig = new_figure(12, 12)
    ax = fig.add_subplot()
    ax.scatter(x, y, s=6, alpha=0.3, color="tab:blue")
    pad_x, pad_y = 0.05 * (np.ptp(x) or 1.0), 0.05 * (np.ptp(y) or 1.0)
    ax.set_xlim(x.min() - pad_x, x.max() + pad_x)
    ax.set_ylim(y.min() - pad_y, y.max() + pad_y)
    shares = [f" ({share[c]:.0%} of the variance)" if c < len(share) else "" for c in (0, 1)]
    ax.set_xlabel("principal component 1" + shares[0], fontsize=11)
    ax.set_ylabel("principal component 2" + shares[1], fontsize=11)
    shown = place_labels(ax, x, y, names, n_labels)
    ax.set_title(f"Item factors on their first two principal components ({len(x)} most-rated items; {shown} titled, most-rated first)", fontsize=12)
    return fig


class Interpretation(pl.Callback):
    """At the end of ``fit`` (rank 0 only), explain the item factors and biases the model learned."""

    def __init__(self, top_items: int = 1000, n_show: int = 10, n_labels: int = 50) -> None:
        self.top_items, self.n_show, self.n_labels = top_items, n_show, n_labels

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        data = trainer.datamodule
        if not trainer.is_global_zero or data is None or not hasattr(data, "item_names"):
            return
        with torch.no_grad():  # the vectors and biases the model predicts with: side features included
            factors = pl_module.all_item_vectors().cpu().numpy()[1:]
            biases = pl_module.all_item_biases()
        bias = biases.cpu().numpy()[1:] if biases is not None else None
        names = data.item_names()[1:]
        counts = data.item_counts()[1:]
        result, coords, top_names = interpret(factors, bias, names, counts, self.top_items, self.n_show)
        share = np.array([c["variance_share"] for c in result["components"]])
        out = Path(trainer.default_root_dir) / "interpretation"
        out.mkdir(parents=True, exist_ok=True)
        text = as_markdown(result)
        write_atomic(out / "interpretation.json", json.dumps(result, indent=2) + "\n")
        write_atomic(out / "interpretation.md", text)
        fig = pca_figure(coords, share, top_names, self.n_labels)
        fig.savefig(out / "item_pca.png", dpi=100)
        if isinstance(trainer.logger, TensorBoardLogger):
            writer = trainer.logger.experiment
            writer.add_text("interpretation/items", text, trainer.global_step)
            writer.add_figure("interpretation/item_pca", fig, trainer.global_step)
            labels = [n.replace("\t", " ").replace("\n", " ") for n in names]
            writer.add_embedding(factors, metadata=labels, tag="item_factors", global_step=trainer.global_step)
            writer.flush()


def bias_figure(ranked: dict[str, list], n_ratings: dict[str, int]) -> Figure:
    """Items with the lowest and the highest learned bias, as bars, each labelled with its training ratings."""
    rows = max(len(ranked["lowest"]), 1)
    fig = new_figure(11, 1.2 + 0.32 * rows)
    for ax, side, color in zip(fig.subplots(1, 2), ("lowest", "highest"), ("#c62828", "#1a7f37")):
        names = [name for name, _ in ranked[side]]
        values = [value for _, value in ranked[side]]
        ax.barh(range(len(values)), values, color=color)
        ax.set_yticks(range(len(values)), [f"{name} ({n_ratings[name]})" for name in names], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color="0.3", lw=0.8)
        ax.set_xlabel("learned item bias")
        ax.set_title(f"{side} bias (training ratings)", fontsize=10)
    fig.tight_layout()
    return fig


def user_figure(user: int, names: list[str], ratings: list[float], predicted: list[float]) -> Figure:
    """One user's ratings beside the model's predictions, an item a row, joined by a line."""
    fig = new_figure(7, 1.6 + 0.32 * max(len(names), 1), constrained=True)
    ax = fig.subplots()
    rows = range(len(names))
    ax.hlines(rows, ratings, predicted, color="0.7", lw=1.5)
    ax.scatter(ratings, rows, color="black", label="rating", zorder=3)
    ax.scatter(predicted, rows, color="#d95f02", marker="D", label="predicted", zorder=3)
    ax.set_yticks(rows, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("rating")
    ax.set_title(f"user {user}: ratings and the model's predictions", fontsize=10)
    fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return fig
