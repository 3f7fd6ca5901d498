"""The ``"cuda"`` backend: numba.cuda kernels with the reference backend's names and signatures.

Every ``<op>_forward`` / ``<op>_backward`` pair of ``scratchnets.backends.OP_NAMES`` is exported
here with the same arguments and PyTorch semantics as ``scratchnets.reference``. Inputs may be
NumPy or numba.cuda device arrays; outputs (and the arrays inside the caches) are device arrays,
C-contiguous, of the input's float dtype. ``scratchnets.to_numpy`` brings a result back.

Each file's docstring gives its kernels, one thread per output element first; the faster
variants of the ops that dominate MobileNetV2 training sit beside them, selected by one constant
per choice (set from GPU measurements, see bench/cuda_commands.md):

* ``_gemm.GEMM``: pointwise convolutions and linear layers as ``v1_naive`` or ``v2_tiled``
  matrix products (``conv.POINTWISE_CONV`` may also send pointwise convs to the general kernels);
* ``conv.CONV_DW``: the weight gradient of other convolutions (depthwise), one thread or one
  block per weight element;
* ``_reduce.CHANNEL_REDUCTION``: BatchNorm statistics and bias gradients, one thread or one
  block per channel.

Every reduction sums in a fixed order (no float atomics): results are bit-identical run to run.
Without a GPU, set ``NUMBA_ENABLE_CUDASIM=1`` before numba is imported to run the kernels in
numba's simulator (slow; for tests at tiny shapes).
"""

from .activations import (
    clip_backward,
    clip_forward,
    hard_sigmoid_backward,
    hard_sigmoid_forward,
    hard_swish_backward,
    hard_swish_forward,
    relu6_backward,
    relu6_forward,
    relu_backward,
    relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    silu_backward,
    silu_forward,
    softmax_backward,
    softmax_forward,
)
from .batchnorm import batch_norm2d_backward, batch_norm2d_forward
from .conv import conv2d_backward, conv2d_forward
from .dropout import dropout_backward, dropout_forward
from .elementwise import (
    add_backward,
    add_forward,
    concat_backward,
    concat_forward,
    mul_backward,
    mul_forward,
    slice_backward,
    slice_forward,
)
from .linear import linear_backward, linear_forward
from .loss import cross_entropy_backward, cross_entropy_forward
from .pad import pad2d_backward, pad2d_forward
from .pooling import (
    adaptive_avg_pool2d_backward,
    adaptive_avg_pool2d_forward,
    adaptive_max_pool2d_backward,
    adaptive_max_pool2d_forward,
    adaptive_max_pool2d_indices,
    avg_pool2d_backward,
    avg_pool2d_forward,
    global_avg_pool2d_backward,
    global_avg_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
    max_pool2d_indices,
)
from .upsample import (
    upsample_bilinear2d_backward,
    upsample_bilinear2d_forward,
    upsample_nearest2d_backward,
    upsample_nearest2d_forward,
)

#: what this backend exports: ``scratchnets.backends.exported_names("cuda")``, the op table's names
#: (checked by tests/test_backend_conformance.py)
__all__ = sorted(name for name, value in globals().items() if callable(value) and name[0] != "_")
