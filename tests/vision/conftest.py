"""Fixtures of the vision tests."""

from __future__ import annotations

import pytest

from stagetune.vision.data import DigitsData


@pytest.fixture
def digits() -> DigitsData:
    """Three digit classes at 16 px in batches of 8: enough to train a step in well under a second."""
    return DigitsData(size=16, classes=[1, 4, 7], batch_size=8)
