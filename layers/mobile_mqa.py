"""Mobile multi-query attention block of the MobileNetV4 hybrids."""

import keras
from keras import ops

from .conv import Conv
from .normalization import get_norm
from .residual import ResidualBlock
from .utils import declare, stored_as_nhwc

_TORCH = keras.backend.backend() == "torch"
if _TORCH:
    import torch

_PACKAGE = "keras_mobilenets"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MobileMQA(ResidualBlock):
    """Norm -> multi-query attention -> [layer scale] -> + input.

    Queries have `num_heads` heads; keys and values have one head shared by
    all query heads. Keys and values may first be downsampled by a strided
    depthwise conv + norm (`kv_strides > 1`). The norms are BatchNorm, or
    RMSNorm with `norm="rms"` (MobileNetV5). All projections are bias-free
    1x1 convolutions. Output channels equal input channels, so the block
    works at any width; heads and key/value dims are not scaled.

    Because keys and values are shared, the heads need no axis of their own:
    each pixel's `num_heads` queries are laid out as `num_heads` extra query
    rows, which gives the head-major channel order of the reference
    (channel = head * value_dim + v) without any transpose.

    The attention logits and softmax are computed in float32 under mixed
    precision. Spatial sizes are read at run time, so any input size works.

    Args:
        num_heads: number of query heads.
        key_dim: width of each query head and of the shared key.
        value_dim: width of the shared value; defaults to `key_dim`.
        kv_strides: stride of the key/value downsampling conv (1 = none).
        dw_kernel_size: kernel of the key/value downsampling conv.
        **kwargs: the shared block settings of `ResidualBlock`.
    """

    def __init__(self, num_heads, key_dim, value_dim=None, kv_strides=1, dw_kernel_size=3, **kwargs):
        kwargs.setdefault("activation", None)
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = value_dim or key_dim
        self.kv_strides = kv_strides
        self.dw_kernel_size = dw_kernel_size

    def _down(self, name, timm):
        if self.kv_strides == 1:
            return None
        return self.conv_bn_act(
            name, kernel_size=self.dw_kernel_size, strides=self.kv_strides, depthwise=True,
            timm=(f"{timm}.down_conv", f"{timm}.norm"),
        )

    @staticmethod
    def _projection(filters, name, timm):
        return declare(Conv(filters, 1, use_bias=False, name=name), timm=timm)

    def build(self, input_shape):
        channels = input_shape[-1]
        self.norm = declare(
            get_norm(self.norm_type, self.bn_epsilon, self.bn_momentum, "norm"), timm="norm"
        )
        self.query = self._projection(self.num_heads * self.key_dim, "query", "attn.query.proj")
        self.key_down = self._down("key_down", "attn.key")
        self.key = self._projection(self.key_dim, "key", "attn.key.proj")
        self.value_down = self._down("value_down", "attn.value")
        self.value = self._projection(self.value_dim, "value", "attn.value.proj")
        self.output_proj = self._projection(channels, "output", "attn.output.proj")
        self.norm.build(input_shape)
        self.query.build(input_shape)
        self.build_sequence(input_shape, [self.key_down, self.key], main=False)
        self.build_sequence(input_shape, [self.value_down, self.value], main=False)
        self.output_proj.build(tuple(input_shape[:-1]) + (self.num_heads * self.value_dim,))
        self.build_skip(input_shape, channels, 1)

    def call(self, x, training=None):
        shortcut = x
        x = stored_as_nhwc(self.norm(x, training=training))  # read by q, k and v
        height, width = x.shape[1], x.shape[2]

        q = _rows(self.query(x), self.key_dim)
        kv_in = x if self.key_down is None else self.key_down(x, training=training)
        k = _rows(self.key(kv_in), self.key_dim)
        kv_in = x if self.value_down is None else self.value_down(x, training=training)
        v = _rows(self.value(kv_in), self.value_dim)

        scale = float(self.key_dim) ** -0.5
        if _fused_attention(q, v):
            # One torch kernel that keeps no attention matrix for the backward
            # pass (it keeps its softmax normaliser and recomputes), as timm's
            # `F.scaled_dot_product_attention`; the matmuls below kept the
            # matrix, one (query rows x keys) map per block.
            o = torch.nn.functional.scaled_dot_product_attention(
                q[:, None], k[:, None], v[:, None], scale=scale)[:, 0]
        else:
            q32 = ops.cast(q, "float32") * scale
            logits = ops.matmul(q32, ops.transpose(ops.cast(k, "float32"), (0, 2, 1)))
            attn = ops.cast(ops.softmax(logits, axis=-1), v.dtype)
            o = ops.matmul(attn, v)
        channels = self.num_heads * self.value_dim
        if height is None or width is None:
            shape = ops.shape(x)
            o = ops.reshape(o, (shape[0], shape[1], shape[2], channels))
        else:
            o = ops.reshape(o, (-1, height, width, channels))
        x = self.output_proj(o)
        return self.finish(x, shortcut, training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            key_dim=self.key_dim,
            value_dim=self.value_dim,
            kv_strides=self.kv_strides,
            dw_kernel_size=self.dw_kernel_size,
        )
        return config


def _fused_attention(q, v):
    """Whether to take torch's fused attention: float32 on torch, in eager
    training and under torch.compile (inference and training; not
    exporting). Elsewhere the matmuls stay (eager inference, exports, mixed
    precision, whose logits this layer computes in float32). Compiled, the
    fused kernel is faster than Inductor's matmuls and softmax at larger
    batches (measured in docs/torch_backend.md)."""
    if not (_TORCH and isinstance(q, torch.Tensor) and q.dtype == v.dtype == torch.float32):
        return False
    if torch.compiler.is_compiling():
        return not torch.compiler.is_exporting()
    return torch.is_grad_enabled()


def _rows(t, depth):
    """`t` (batch, height, width, n * depth) as (batch, rows, depth). With
    static sizes the target shape is a constant (-1 for the batch): traced
    and exported graphs then need no Shape / StridedSlice / Pack to compute
    it, which LiteRT's XNNPACK delegate cannot run (each cut its graph)."""
    if all(d is not None for d in t.shape[1:]):
        rows = t.shape[1] * t.shape[2] * t.shape[3] // depth
        return ops.reshape(t, (-1, rows, depth))
    return ops.reshape(t, (ops.shape(t)[0], -1, depth))
