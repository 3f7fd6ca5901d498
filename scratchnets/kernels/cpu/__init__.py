"""The ``"cpu"`` backend: Numba kernels (and BLAS) with the reference's names and signatures.

Every ``<op>_forward`` / ``<op>_backward`` pair of ``scratchnets.backends.OP_NAMES`` is exported
here, with the same arguments and PyTorch semantics as ``scratchnets.reference``; caches are
private to each backend. Each file's header says what it optimises over the reference and
why. ``fused`` holds the eval fast path's conv -> bias -> activation (the op table's ``fused``
names of conv2d); ``batchnorm`` also runs BN -> activation in BN's passes for training.

Kernels are compiled on first use for C-contiguous float32 / float64 arrays (the wrappers
normalise their inputs) and cached on disk (``cache=True``).
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
from .batchnorm import batch_norm2d_act_forward, batch_norm2d_backward, batch_norm2d_forward
from .channels_last import global_avg_pool2d_channels_last
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
from .fused import (
    batch_norm2d_eval_affine,
    conv2d_bias_act_checked,
    conv2d_bias_act_forward,
    conv2d_bias_act_prepared,
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

#: what this backend exports: ``scratchnets.backends.exported_names("cpu")``, the op table's names
#: (checked by tests/test_backend_conformance.py)
__all__ = sorted(name for name, value in globals().items() if callable(value) and name[0] != "_")
