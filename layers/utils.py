"""Small helpers shared by the building blocks."""

import contextlib
import functools

import keras
from keras import ops

if keras.backend.backend() == "torch":
    import torch
    import torch.nn.functional as F

PADDING_MODES = ("same", "symmetric")


def declare(layer, **names):
    """Record what the reference implementations call `layer`; returns it.

    `declare(layer, timm="conv_pw")`: the weight loaders join the declared
    names along a layer's path to find its tensors in a reference
    checkpoint, so a block states its sub-layers' reference names where it
    creates them. An empty name ("") adds nothing to the path.
    """
    merged = dict(getattr(layer, "reference_names", None) or {})
    merged.update(names)
    object.__setattr__(layer, "reference_names", merged)
    return layer


_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def hard_swish_slope(x):
    """The derivative of hard swish `x * relu6(x + 3) / 6` at `x`, as
    TensorFlow's (its relu6 passes the gradient strictly inside (0, 6)): 0 up
    to -3, 1 from 3, (2x + 3) / 6 between. Written piecewise, one feature map
    is alive beside `x` at a time; as relu6(x + 3) / 6 + [inside] x / 6 a V3
    small step peaked up to 0.17 GiB higher in three runs
    (docs/training_memory.md)."""
    return ops.where(x >= 3.0, 1.0, ops.where(x <= -3.0, 0.0, x * (1.0 / 3.0) + 0.5))


def gelu_slope(x):
    """The derivative of exact GELU at `x`, `Phi(x) + x * phi(x)`."""
    cdf = 0.5 * (1.0 + ops.erf(x * _SQRT_HALF))
    pdf = ops.exp(-0.5 * ops.square(x)) * _INV_SQRT_2PI
    return cdf + x * pdf


def batch_norm_scale_shift(gamma, beta, mean, variance, epsilon):
    """BatchNorm with these (float32, per-channel) statistics as
    `x * scale + shift`; returns `(scale, shift)`."""
    scale = gamma * ops.rsqrt(variance + epsilon)
    return scale, beta - mean * scale


def after_upstream(upstream, x):
    """`x`, read in a custom gradient only once `upstream` exists.

    TensorFlow's graph executor runs an op as soon as its inputs exist, so a
    gradient function's work on forward tensors alone (a recomputed
    activation, a derivative) ran during the forward pass and its results
    were held until the backward pass reached them: feature maps kept beside
    the ones the step meant to keep (docs/training_memory.md). Other
    backends run the backward pass after the forward one anyway.
    """
    if keras.backend.backend() != "tensorflow":
        return x
    import tensorflow as tf

    with tf.control_dependencies([upstream]):
        return tf.identity(x)


def make_divisible(value, divisor=8, min_value=None, round_limit=0.9):
    """Round a channel count to a multiple of `divisor`.

    This is the rounding used by every reference implementation (TF-slim,
    keras.applications, timm): round to the nearest multiple, but never go
    below `round_limit` of the requested value, so that narrow layers do not
    lose more than 10% of their channels.

    Args:
        value: the requested (possibly fractional) channel count.
        divisor: the channel count is a multiple of this.
        min_value: lower bound of the result; defaults to `divisor`.
        round_limit: if rounding down loses more than `1 - round_limit` of
            `value`, round up instead.

    Returns:
        The rounded channel count as an `int`.
    """
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return int(new_value)


def check_padding(padding):
    if padding not in PADDING_MODES:
        raise ValueError(
            f"padding must be one of {PADDING_MODES}, got {padding!r}. "
            "'same' is TensorFlow SAME padding (keras.applications weights); "
            "'symmetric' pads kernel_size // 2 on every side (timm weights)."
        )
    return padding


class SymmetricPadding:
    """Mixin for `Conv` and `DepthwiseConv`: `symmetric_padding=p` zero-pads
    `p` pixels on every side of the input before a "valid" convolution
    (PyTorch's padding, timm's weights; TensorFlow SAME pads asymmetrically
    at stride 2). Inside the convolution rather than as a separate pad op,
    so that PyTorch convolves with its own padding and `torch.onnx.export`
    writes a Conv with `pads` instead of a Pad node, which onnxruntime does
    not fuse into the convolution."""

    def __init__(self, *args, symmetric_padding=0, **kwargs):
        super().__init__(*args, **kwargs)
        if symmetric_padding and self.padding != "valid":
            raise ValueError(
                f"symmetric_padding needs padding='valid', got padding={self.padding!r}."
            )
        self.symmetric_padding = int(symmetric_padding)

    def compute_output_shape(self, input_shape):
        p = 2 * self.symmetric_padding
        padded = [input_shape[0]] + [None if d is None else d + p for d in input_shape[1:3]]
        return super().compute_output_shape(tuple(padded) + tuple(input_shape[3:]))

    def get_config(self):
        return {**super().get_config(), "symmetric_padding": self.symmetric_padding}


def conv_nhwc(conv_op, inputs, kernel, strides, padding, dilation_rate=1, pad=0, bias=None):
    """Apply `ops.conv` or `ops.depthwise_conv` to channels-last `inputs`,
    after zero-padding `pad` pixels on every side (with `padding="valid"`).

    Keras' PyTorch backend copies channels-last inputs to NCHW and then back
    to channels-last memory around every convolution, and returns an NCHW
    result that the next layer copies again. PyTorch convolves channels-last
    memory directly when it is handed as an NCHW view, so on torch the input
    goes in as a transposed view and the output comes back as one: no copies.
    There `pad` goes to the convolution itself (Keras' `ops.conv` takes no
    explicit padding), and `bias` (per output channel) too: a separate add
    made Inductor (torch.compile) write the feature map once more. On
    TensorFlow `pad` is the convolution's explicit padding
    (`_tf_conv_nhwc`). On JAX on CPU a 1x1 convolution at stride 1 is a
    matrix product over the channels (`_jax_pointwise`), and a strided one
    takes its input gradient by stride phase (`jax_strided_conv`; padding
    and `pad` become the convolution's own). Elsewhere this is
    the plain channels-last op, plus `bias` (on TensorFlow a `BiasAdd`:
    `_tf_bias_add`).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow" and pad and _pair(dilation_rate) == (1, 1):
        return _tf_conv_nhwc(conv_op is ops.depthwise_conv, inputs, kernel, strides, pad, bias)
    if backend == "jax" and conv_op is ops.conv and not pad and _jax_pointwise(kernel, strides):
        y = _jax_pointwise_product()(ops.convert_to_tensor(inputs), ops.convert_to_tensor(kernel))
        return y if bias is None else y + bias
    if backend == "jax" and conv_op is ops.conv and _jax_strided(inputs, kernel, strides,
                                                                 dilation_rate):
        from .jax_strided_conv import strided_conv

        sizes = zip(inputs.shape[1:3], kernel.shape[:2], _pair(strides))
        pads = tuple((pad + before, pad + after) for before, after in (
            same_pads(n + 2 * pad, k, s) if padding == "same" else (0, 0) for n, k, s in sizes))
        y = strided_conv(_pair(strides), pads)(ops.convert_to_tensor(inputs),
                                                ops.convert_to_tensor(kernel))
        return y if bias is None else y + bias
    if backend != "torch":
        if pad:
            inputs = ops.pad(inputs, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        y = conv_op(inputs, kernel, data_format="channels_last", strides=strides,
                    padding=padding, dilation_rate=dilation_rate)
        if bias is None:
            return y
        return _tf_bias_add(y, bias) if backend == "tensorflow" else y + bias
    return _torch_conv_nhwc(conv_op is ops.depthwise_conv, inputs, kernel, strides, padding,
                            dilation_rate, pad, bias)


def _tf_conv_nhwc(depthwise, x, kernel, strides, pad, bias=None):
    """The convolution with TensorFlow's explicit padding instead of a padded
    copy of `x`, which a training step keeps for the kernel's gradient (one
    extra feature map per strided layer of timm-style models) and which
    takes a pass of its own. Same numbers (the padding is the same zeros)."""
    import tensorflow as tf

    x = ops.convert_to_tensor(x)
    kernel = ops.cast(kernel, x.dtype)
    paddings = [[0, 0], [pad, pad], [pad, pad], [0, 0]]
    strides = _pair(strides)
    if depthwise:
        # With its oneDNN optimisations on (the default on CPUs with AVX-512
        # VNNI or AMX), TensorFlow's graph remapper fuses a depthwise
        # convolution and the bias add after it into one node that loses the
        # explicit paddings, and its shape inference aborts the process
        # ("Check failed: ... Invalid index from the dimension: 1, 0, H"):
        # V4 inference did. There SAME is the same padding where it is
        # symmetric, and inference (the folded bias) pads a copy elsewhere.
        # Not zero taps after the kernel (SAME with a 4x4 or 6x6 kernel):
        # exported to .tflite, XNNPACK ran those 1.25-1.44x slower
        # (docs/training_memory.md).
        sizes = zip(x.shape[1:3], kernel.shape[:2], strides)
        fused = bias is not None and _tf_onednn_enabled()
        if fused and all(isinstance(n, int) and same_pads(n, k, s) == (pad, pad)
                         for n, k, s in sizes):
            paddings = "SAME"
        elif fused:
            x, paddings = tf.pad(x, paddings), "VALID"
        y = tf.nn.depthwise_conv2d(x, kernel, (1, *strides, 1), paddings)
    else:
        y = tf.nn.conv2d(x, kernel, strides, paddings)
    return y if bias is None else _tf_bias_add(y, bias)


def _tf_bias_add(y, bias):
    """`y + bias` as TensorFlow's `BiasAdd`, which its graph remapper fuses
    into the convolution before it together with what follows: a hard-swish
    (MobileNetV3's activation, otherwise four passes over the map) or a
    residual sum. As an `AddV2` the convolution took the bias alone, and
    TensorFlow's arithmetic optimiser merged a bias and a residual sum into
    one `AddN` the convolution did not take at all (docs/speed.md)."""
    import tensorflow as tf

    return tf.nn.bias_add(y, ops.cast(bias, y.dtype))


@functools.cache
def _tf_onednn_enabled():
    """Whether TensorFlow runs its oneDNN graph optimisations in this process
    (a private TensorFlow function; unknown counts as on). Fixed for the
    process, and asked by every eager depthwise call: kept."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return True
    return bool(getattr(_pywrap_util_port, "IsMklEnabled", lambda: True)())


def stored_as_nhwc(x):
    """`x` (a channels-last feature map that several layers read), stored by
    torch.compile's Inductor in channels-last memory; unchanged elsewhere.

    Inductor's layout optimisation (on CPU always, for graphs with
    convolutions) stores a tensor read more than once with the
    channels-last strides of an NCHW tensor of its shape: ours are NHWC in
    shape, so it wrote a block's output (read by the next block and the
    residual sum) with the height innermost, through transposes, and
    copied it back to channels-last memory for each convolution reading it
    (three copies of an attention block's normalised input, one per
    projection; docs/torch_backend.md). Fixing the strides to the
    contiguous NHWC ones keeps the memory the convolutions read and write.
    Inference only (the op has no gradient); exported graphs are left as
    they are.
    """
    if (keras.backend.backend() != "torch" or not isinstance(x, torch.Tensor) or x.ndim != 4
            or not torch.compiler.is_compiling() or torch.compiler.is_exporting()
            or (torch.is_grad_enabled() and x.requires_grad)):  # the op has no gradient
        return x
    from torch._inductor import inductor_prims  # noqa: F401 (registers the op)

    n, h, w, c = x.shape
    return torch.ops.prims.inductor_force_stride_order(x, (h * w * c, w * c, c, 1))


def same_pads(size, kernel, stride, dilation=1):
    """TensorFlow SAME padding of one spatial axis as `(before, after)`: the
    odd pixel goes after. `size` may be a tensor (a size unknown when traced)."""
    # ceil(size / stride) without a negative division: exported, a traced size's
    # division truncates, which floors only non-negative numbers
    total = ((size + stride - 1) // stride - 1) * stride + (kernel - 1) * dilation + 1 - size
    total = max(total, 0) if isinstance(total, int) else ops.maximum(total, 0)
    return total // 2, total - total // 2


_FIXED_SIZES = [False]


@contextlib.contextmanager
def fixed_sizes_when_traced(enabled=True):
    """While torch.jit traces a model whose inputs have a fixed height and
    width (Keras' ONNX export on torch), read the convolutions' spatial
    sizes as numbers. Traced, a size is a tensor, so TensorFlow SAME padding
    was exported as arithmetic on the input's shape (`Shape`, `Gather`,
    `Sub`, `Div`, `Max`: 5 `Shape` and 30 `Sub` nodes in V3 small) feeding
    `Pad` nodes whose amounts onnxruntime cannot fold into the convolution.
    Only with fixed sizes: a traced graph with free sizes must keep the
    arithmetic, since the odd pixel's side depends on the size."""
    before = _FIXED_SIZES[0]
    _FIXED_SIZES[0] = enabled
    try:
        yield
    finally:
        _FIXED_SIZES[0] = before


def _spatial_sizes(x):
    """Height and width of NCHW `x` (or of an OIHW kernel), as ints while
    tracing with fixed sizes."""
    sizes = tuple(x.shape[2:])
    if _FIXED_SIZES[0] and torch.jit.is_tracing():
        sizes = tuple(int(s) for s in sizes)
    return sizes


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


_POINTWISE_AS_MATMUL = [True]


def _jax_pointwise(kernel, strides):
    """Whether JAX should run this convolution as a matrix product: a 1x1
    kernel at stride 1 (any padding is none), on XLA's CPU backend, outside
    `pointwise_as_conv`. XLA:CPU ran the 1x1 convolutions slower than the
    same product (same outputs), and computes a convolution's kernel
    gradient as a convolution over the batch, with channels-first copies of
    the input and of the output gradient, where a product's gradients are
    two products of the tensors as they are (timed in
    `benchmarks/README.md`)."""
    return (_POINTWISE_AS_MATMUL[0] and tuple(kernel.shape[:2]) == (1, 1)
            and _pair(strides) == (1, 1) and jax_on_cpu())


def _jax_strided(x, kernel, strides, dilation_rate):
    """Whether JAX should run this convolution through
    `jax_strided_conv.strided_conv`: strided, undilated, not grouped, on
    XLA's CPU backend, outside `pointwise_as_conv`."""
    return (_POINTWISE_AS_MATMUL[0] and _pair(strides) != (1, 1)
            and _pair(dilation_rate) == (1, 1) and kernel.shape[2] == x.shape[-1]
            and all(isinstance(n, int) for n in x.shape[1:3]) and jax_on_cpu())


@functools.cache
def _jax_pointwise_product():
    """`x @ kernel[0, 0]` with its gradients as products of the tensors as
    they are. JAX's own derivative of the product kept more of a training
    step's temporaries alive than the convolution did; this backward pass
    keeps the convolution's (XLA's memory analysis, `benchmarks/README.md`)."""
    import jax
    import jax.numpy as jnp

    @jax.custom_vjp
    def product(x, kernel):
        return x @ kernel[0, 0].astype(x.dtype)

    def forward(x, kernel):
        return product(x, kernel), (x, kernel)

    def backward(saved, grad):
        x, kernel = saved
        dx = grad @ kernel[0, 0].astype(grad.dtype).T
        dk = jnp.einsum("nhwc,nhwo->co", x, grad)[None, None].astype(kernel.dtype)
        return dx, dk

    product.defvjp(forward, backward)
    return product


@functools.cache
def jax_on_cpu():
    """Whether Keras' JAX backend runs on CPU devices (XLA:CPU)."""
    return keras.distribution.list_devices()[0].startswith("cpu")


@contextlib.contextmanager
def pointwise_as_conv(enabled=True):
    """Keep 1x1 convolutions as convolutions on JAX while this runs, and
    strided ones without `jax_strided_conv`'s gradient.
    Exports use it: their graphs (ONNX `Conv` nodes, SavedModel `Conv2D`)
    and the latencies measured of them stay as they were; the product in an
    exported runtime is not measured."""
    before = _POINTWISE_AS_MATMUL[0]
    _POINTWISE_AS_MATMUL[0] = before and not enabled
    try:
        yield
    finally:
        _POINTWISE_AS_MATMUL[0] = before


def _torch_conv_nhwc(depthwise, x, kernel, strides, padding, dilation_rate, pad, bias=None):
    """The convolution in torch itself, as Keras' `ops.conv` computes it but
    without its per-call work (argument checks, channels-last tests)."""
    weight = torch_conv_weight(ops.convert_to_tensor(kernel), depthwise)
    bias = None if bias is None else ops.convert_to_tensor(bias)
    return torch_conv_nhwc(ops.convert_to_tensor(x), weight, bias, strides, padding,
                           dilation_rate, pad)


def torch_conv_weight(kernel, depthwise=False):
    """A Keras kernel, `(kh, kw, in, out)` or depthwise `(kh, kw, in,
    multiplier)`, as torch's `(out, in / groups, kh, kw)` (a view)."""
    kh, kw, in_channels, out = kernel.shape
    if depthwise:  # output channel = in * multiplier + m
        kernel = kernel.reshape(kh, kw, 1, in_channels * out)
    return kernel.permute(3, 2, 0, 1)


# Compiled 1x1 convolutions from this batch on go to ATen's convolution
# (oneDNN there), below it to one GEMM (`torch_conv_nhwc`).
ONEDNN_POINTWISE_BATCH = 16


def _zero_taps(x, weight, groups, pads, dilation):
    """A depthwise convolution's TensorFlow SAME padding with one pixel more
    after than before, as the convolution's own symmetric padding: the
    kernel gets a row and a column of zeros before its first, so that output
    pixel `i` still reads input pixels `s*i - before ...`. Returns the
    kernel and padding, or None where that does not apply (exported and
    traced graphs keep their `Pad`).

    A padded copy of the input is a new feature map on every call, and
    writing it cost more than the convolution (`F.pad` then a 3x3
    depthwise at batch 32, 64 channels, 112x112: 55.6 ms against 5.9 with
    the zero taps, one thread, AMD EPYC; docs/torch_backend.md); in
    training the backward pass padded it again (`_PaddedConv`), and a
    compiled step kept it. The products with the zeros add exact zeros, and
    the zeros' gradients are dropped with them. Dense convolutions (the
    stems) keep the copy: there the extra products cost more than it."""
    if (groups == 1 or groups != x.shape[1] or dilation != (1, 1)
            or torch.compiler.is_exporting() or torch.jit.is_tracing()):
        return None
    left, right, top, bottom = pads
    if top > bottom or bottom - top > 1 or left > right or right - left > 1:
        return None
    weight = F.pad(weight, (right - left, 0, bottom - top, 0))
    return weight, (bottom, right)


def torch_conv_nhwc(x, weight, bias, strides, padding, dilation_rate=1, pad=0):
    """`F.conv2d` of channels-last torch tensor `x` with torch-layout `weight`
    (groups = input channels / weight's), Keras' `padding` ("same" is
    TensorFlow's) after `pad` pixels on every side; channels-last result."""
    if (torch.compiler.is_compiling() and not torch.compiler.is_exporting()
            and weight.shape[2:] == (1, 1) and weight.shape[1] == x.shape[3] and not pad
            and _pair(strides) == (1, 1) and x.shape[0] < ONEDNN_POINTWISE_BATCH):
        # A 1x1 convolution is a matrix product over the channels. Compiled,
        # Inductor chose its own layout for the input and ATen then convolved
        # it with the unblocked `_slow_conv2d` (at batch 1 on one thread: 40%
        # of a compiled MobileNetV1's time); as `linear` it is one GEMM on the
        # channels-last memory. From batch 16 ATen convolves 1x1 with oneDNN,
        # which was twice as fast as that GEMM (MKL) on an AMD EPYC
        # (docs/torch_backend.md). Exported graphs keep their convolutions.
        return F.linear(x, weight[:, :, 0, 0], bias)
    x = x.permute(0, 3, 1, 2)  # an NCHW view of channels-last memory
    strides, dilation = _pair(strides), _pair(dilation_rate)
    groups = x.shape[1] // weight.shape[1]
    torch_padding = (pad, pad)
    if padding == "same":  # TensorFlow SAME: any odd pixel goes to the bottom / right
        sizes = zip(_spatial_sizes(x), _spatial_sizes(weight), strides, dilation)
        pads = [same_pads(*axis) for axis in sizes]
        # traced by torch.jit with free sizes, the amounts are tensors, and a
        # Python test of their symmetry would hold for the traced size only
        if all(not isinstance(a, torch.Tensor) and a == b for a, b in pads):
            torch_padding = tuple(a for a, _ in pads)
        else:
            pads = (pads[1][0], pads[1][1], pads[0][0], pads[0][1])
            spread = _zero_taps(x, weight, groups, pads, dilation)
            if spread is not None:
                weight, torch_padding = spread
            elif (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
                    and not torch.compiler.is_compiling() and not torch.compiler.is_exporting()
                    and not torch.jit.is_tracing()):  # eager autograd, nothing tracing
                y = _PaddedConv.apply(x, weight, bias, pads, strides, dilation, groups)
                return y.permute(0, 2, 3, 1)
            else:
                x = F.pad(x, pads)
                torch_padding = (0, 0)
    y = F.conv2d(x, weight, bias, stride=strides, padding=torch_padding, dilation=dilation,
                 groups=groups)
    return y.permute(0, 2, 3, 1)


if keras.backend.backend() == "torch":

    class _PaddedConv(torch.autograd.Function):
        """`conv2d(pad(x))` for training, keeping `x`, not its padded copy,
        for the backward pass, which pads it again (a copy, cheap beside the
        convolution). Autograd would keep both: the padded copy for the
        convolution and `x` for the activation before it. TensorFlow SAME
        padding is asymmetric at stride 2, which `conv2d`'s own padding is
        not; a training step of keras.applications-style V1-V3 kept one
        extra feature map per stride-2 layer (memory measured in
        `benchmarks/README.md`). Same operations, same gradients."""

        @staticmethod
        def forward(ctx, x, weight, bias, pads, stride, dilation, groups):
            ctx.save_for_backward(x, weight)
            ctx.options = (pads, stride, dilation, groups, bias is not None)
            return F.conv2d(F.pad(x, pads), weight, bias, stride, 0, dilation, groups)

        @staticmethod
        def backward(ctx, grad):
            x, weight = ctx.saved_tensors
            pads, stride, dilation, groups, has_bias = ctx.options
            grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, F.pad(x, pads), weight, [weight.shape[0]] if has_bias else None,
                list(stride), [0, 0], list(dilation), False, [0, 0], groups,
                [ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2]])
            if grad_x is not None:
                left, right, top, bottom = pads
                grad_x = grad_x[:, :, top:grad_x.shape[2] - bottom, left:grad_x.shape[3] - right]
            return grad_x, grad_w, grad_b, None, None, None, None
