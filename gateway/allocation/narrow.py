"""Reductions along the short axis of a (chargers, few) array, column by column: numpy's own reduction along
an axis of 2-3 elements is several times slower than a few element-wise calls over the columns."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def row_max(a: FloatArray, initial: float | None = None) -> FloatArray:
    """``a.max(axis=1)`` (with ``initial`` among each row's values when given; a NaN in a row gives NaN)."""
    n, k = a.shape
    if not k:
        if initial is None:
            raise ValueError("row_max of rows without values and no initial")
        return np.full(n, initial, dtype=np.float64)
    out = np.array(a[:, 0], dtype=np.float64)
    for j in range(1, k):
        np.maximum(out, a[:, j], out=out)
    if initial is not None:
        np.maximum(out, initial, out=out)
    return out


def row_any(a: BoolArray) -> BoolArray:
    """``a.any(axis=1)``."""
    out = np.zeros(a.shape[0], dtype=bool)
    for j in range(a.shape[1]):
        np.logical_or(out, a[:, j], out=out)
    return out
