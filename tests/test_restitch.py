"""`restitch_logits` (src/evaluation/restitch.py) against plain computations.

The per-cell mean of overlapping windows is covered by tests/test_properties.py; these tests
pin what those leave open: the error message, windows and positions of unequal number.
"""

from __future__ import annotations

import numpy as np
import pytest

from src.evaluation.restitch import restitch_logits


def test_uncovered_cells_are_counted_in_the_error():
    # Windows of 4×4 cells at origins 0, 4, 8, 12: three of the sixteen windows are missing.
    origins = [0, 4, 8, 12]
    present = [(r, c) for r in range(4) for c in range(4) if (r, c) not in {(0, 0), (3, 1), (2, 2)}]
    logits = np.zeros((len(present), 2, 4, 4), dtype=np.float32)
    rows, cols = [r for r, _ in present], [c for _, c in present]
    with pytest.raises(ValueError, match=r"^48 label cells are covered by no window$"):
        restitch_logits(logits, rows, cols, origins)
    # A single window of 16×16 cells leaves nothing uncovered.
    whole = restitch_logits(np.ones((1, 2, 16, 16)), [0], [0], [0])
    assert whole.dtype == np.float32 and whole.shape == (2, 16, 16)


def test_windows_and_positions_must_have_the_same_length():
    logits = np.zeros((2, 1, 16, 16), dtype=np.float32)
    with pytest.raises(ValueError):
        restitch_logits(logits, [0], [0], [0])  # one position for two windows
    with pytest.raises(ValueError):
        restitch_logits(logits[:1], [0, 0], [0, 0], [0])  # two positions for one window


def test_overlapping_windows_average_each_cell():
    # Windows of 8×8 cells with stride 4: origins 0, 4, 8; cell (5, 9) is covered by the
    # windows (1, 1), (1, 2), (0, 1), (0, 2), whose values are 1, 2, 3, 4 there.
    origins = [0, 4, 8]
    pairs = [(r, c) for r in range(3) for c in range(3)]
    value = {(1, 1): 1.0, (1, 2): 2.0, (0, 1): 3.0, (0, 2): 4.0}
    logits = np.stack([np.full((1, 8, 8), value.get(p, 0.0)) for p in pairs])
    result = restitch_logits(logits, [r for r, _ in pairs], [c for _, c in pairs], origins)
    assert result[0, 5, 9] == pytest.approx(2.5)
    assert result[0, 0, 0] == 0.0
    # Cell (0, 4) lies in windows (0, 0) and (0, 1) only: (0 + 3) / 2.
    assert result[0, 0, 4] == pytest.approx(1.5)
