"""The item PCA picture: each axis says its share of the variance, and no two titles overlap."""

import numpy as np

from stagetune.collab.interpret import interpret, pca_figure


def crowded_items(n: int = 400, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(n, 5)) * np.array([3.0, 2.0, 1.0, 0.5, 0.2])
    return factors, [f"A Rather Long Movie Title Number {k} (1995)" for k in range(n)]


def test_pca_axes_give_the_variance_share_and_titles_do_not_overlap():
    factors, names = crowded_items()
    result, coords, top_names = interpret(factors, None, names, np.arange(len(names), 0, -1))
    share = np.array([c["variance_share"] for c in result["components"]])
    fig = pca_figure(coords, share, top_names, n_labels=80)
    ax = fig.axes[0]
    assert ax.get_xlabel() == f"principal component 1 ({share[0]:.0%} of the variance)"
    assert ax.get_ylabel() == f"principal component 2 ({share[1]:.0%} of the variance)"
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert 10 <= len(boxes) < 80, "crowded: some titles fit, the rest are left out"
    assert not [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
    frame = ax.get_window_extent(renderer)
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    assert [t.get_text() for t in ax.texts] == [n for n in top_names[:80] if n in {t.get_text() for t in ax.texts}], "most-rated first"
    assert f"{len(boxes)} titled" in ax.get_title()
