"""A small MovieLens-format ratings file with structure, made on the spot."""

from __future__ import annotations

import numpy as np

N_USERS, N_ITEMS, N_RATINGS = 60, 40, 1500


def write_u_data(folder, test_shift: int) -> None:
    """Ratings with some structure; u1's test part (the first fifth of lines) shifted by ``test_shift`` stars."""
    rng = np.random.default_rng(0)
    cells = rng.choice(N_USERS * N_ITEMS, N_RATINGS, replace=False)
    users, items = cells // N_ITEMS + 1, cells % N_ITEMS + 1
    stars = np.clip(np.round(3 + 0.03 * (users % 7) - 0.04 * (items % 5) + rng.normal(0, 0.8, N_RATINGS)), 1, 5)
    stars[: N_RATINGS // 5] = np.clip(stars[: N_RATINGS // 5] + test_shift, 1, 5)
    folder.mkdir(parents=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{int(r)}\t{880000000 + k}\n" for k, (u, i, r) in enumerate(zip(users, items, stars))))
