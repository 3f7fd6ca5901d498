"""The cuda backend's launch helpers: device arrays in the dtype and layout the kernels take.

The ops themselves are tested per family in tests/ops/test_<family>.py (their cuda tests, marked
``cuda``, run in this directory's process: scripts/test.sh).
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import cuda

from scratchnets import to_numpy
from scratchnets.kernels.cuda import _launch

pytestmark = pytest.mark.cuda


def test_device_array_normalises_dtype_and_layout():
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    as64 = _launch.device_array(cuda.to_device(host), "a", np.float64)  # cast on the device
    assert as64.dtype == np.float64
    np.testing.assert_array_equal(to_numpy(as64), host)
    view = cuda.to_device(host)[:, 1:3]  # a non-contiguous device view
    np.testing.assert_array_equal(to_numpy(_launch.device_array(view, "a")), host[:, 1:3])
    with pytest.raises(TypeError, match="float32 or float64"):
        _launch.device_array(np.arange(3), "a")
