"""The reference backend: readable NumPy, the spec every other backend is tested against.

One ``<op>_forward(...) -> (y, cache)`` / ``<op>_backward(dy, cache) -> grads`` pair per op,
PyTorch semantics, float32 and float64, NCHW. This package imports only NumPy.

Signatures (identical in ``scratchnets.kernels.cpu`` and ``scratchnets.kernels.cuda``)::

    conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1) -> (y, cache)
    conv2d_backward(dy, cache) -> (dx, dw, db_or_None)
    pad2d_forward(x, padding, mode="constant", value=0.0) -> (y, cache)   # constant / reflect /
    pad2d_backward(dy, cache) -> dx                                        # replicate / circular
    batch_norm2d_forward(x, weight, bias, running_mean, running_var, training=True,
                         momentum=0.1, eps=1e-5) -> (y, cache)   # updates running stats in place
    batch_norm2d_backward(dy, cache) -> (dx, dweight, dbias)
    relu_forward(x) / relu6_forward(x) / sigmoid_forward(x) / hard_sigmoid_forward(x) -> (y, cache)
    hard_swish_forward(x) / silu_forward(x) -> (y, cache)
    clip_forward(x, low=-1.0, high=1.0) -> (y, cache)    # F.hardtanh, ONNX Clip
    softmax_forward(x, axis=-1) -> (y, cache)
    relu_backward(dy, cache) ... -> dx
    max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1,
                       ceil_mode=False) -> (y, cache)
    avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                       count_include_pad=True, divisor_override=None) -> (y, cache)
    global_avg_pool2d_forward(x) -> (y of shape (N, C, 1, 1), cache)
    adaptive_avg_pool2d_forward(x, output_size) / adaptive_max_pool2d_forward(x, output_size)
    *_pool2d_backward(dy, cache) -> dx
    linear_forward(x, w, b=None) -> (y, cache); linear_backward(dy, cache) -> (dx, dw, db_or_None)
    dropout_forward(x, p=0.5, training=True, seed=None) -> (y, cache); dropout_backward -> dx
    upsample_nearest2d_forward(x, size, sampling=None) / upsample_bilinear2d_forward(x, size,
                               sampling=None) -> (y, cache)   # sampling: upsample.Sampling
    upsample_*_backward(dy, cache) -> dx
    add_forward(a, b) / mul_forward(a, b) -> (y, cache)    # NumPy broadcasting
    add_backward(dy, cache) / mul_backward(dy, cache) -> (da, db)   # reduced to input shapes
    concat_forward(xs, axis=1) -> (y, cache); concat_backward(dy, cache) -> tuple of dx
    slice_forward(x, start, stop, axis=1) -> (y, cache); slice_backward(dy, cache) -> dx
    cross_entropy_forward(logits, target, label_smoothing=0.0) -> (loss, cache)
    cross_entropy_backward(dloss, cache) -> dlogits
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

#: what this backend exports: ``scratchnets.backends.exported_names("reference")``, the op table's names
#: (checked by tests/test_backend_conformance.py)
__all__ = sorted(name for name, value in globals().items() if callable(value) and name[0] != "_")
