"""A few of PyTorch's own layer samples (``tests/test_torch_module_samples.py``) on the cuda
backend: the first module_db sample of every layer, in train and in eval mode, float64 within
1e-9 of torch (y, dx, parameter gradients, buffers, return_indices)."""

from __future__ import annotations

import pytest

from tests.test_torch_module_samples import SAMPLES, _run_sample

pytestmark = pytest.mark.cuda

FIRST_OF_EACH_LAYER = [
    sample
    for sample in SAMPLES
    if sample.values[2] == 0  # index 0: each layer's first sample, once per mode
]


@pytest.mark.parametrize("name, training, index", FIRST_OF_EACH_LAYER)
def test_first_module_db_sample_of_each_layer_matches_torch_on_cuda(name, training, index):
    _run_sample(name, training, index, "cuda")
