"""Array helpers shared by every backend: converting to NumPy and checking dtypes."""

from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def to_numpy(a) -> np.ndarray:
    """Return ``a`` as a host NumPy array, whatever backend produced it (copies device arrays)."""
    if hasattr(a, "copy_to_host"):  # numba.cuda device array (real GPU or simulator)
        return a.copy_to_host()
    return np.asarray(a)


def is_device_array(a) -> bool:
    return hasattr(a, "copy_to_host")
