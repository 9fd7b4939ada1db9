"""Shared fixtures (the helpers they build on are in tests/helpers/)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from stagetune.runs.targets import TRUST_ENV
from tests.tiny import TinyData, TinyNet

# The tiny model, data and callbacks are rebuilt from run directories (resume, predict): trust them
# the way a user trusts their own code (docs/howto/security.md); every other foreign target stays refused.
os.environ.setdefault(TRUST_ENV, "tests.tiny")


@pytest.fixture
def tiny():
    return TinyNet(), TinyData()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: extra torch threads only contend for the shared cores (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """Six real digits (5-9 and one 5 more) as 8x8 grey PNGs, ink bright, as the data holds them."""
    folder = tmp_path_factory.mktemp("images")
    digits = load_digits()
    picks = [int(np.flatnonzero(digits.target == d)[0]) for d in (5, 6, 7, 8, 9)] + [int(np.flatnonzero(digits.target == 5)[1])]
    for n, k in enumerate(picks):
        Image.fromarray(np.round(digits.images[k] * 255 / 16).astype(np.uint8)).save(folder / f"{n}.png")
    return folder, digits.images[picks]
