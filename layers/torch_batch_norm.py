"""Training BatchNorm and the activation after it as one torch operator.

`batch_norm_act(x, gamma, beta, epsilon, activation)` is `ConvBnAct`'s
training step on torch (float32): torch's fused `native_batch_norm`, the
activation applied in place, and a backward operator of its own that calls
torch's `native_batch_norm_backward` and the activation's backward kernel.

Why an operator (`torch.library.custom_op`) and not plain torch calls: under
torch.compile (`jit_compile=True`) Inductor decomposes BatchNorm into loops
of its own, and on CPU those ran several times slower than torch's kernels
on our channels-last feature maps (one reduction loop per 16 channels over
the whole map, and the activation masks kept for backward written in
transposed tiles); the convolutions' backward then received gradients in
another memory layout. An operator is opaque to Inductor: compiled training
runs torch's own kernels, as eager training does (measured in
`docs/torch_backend.md`).

The backward pass keeps the BatchNorm input, and the output for ReLU /
ReLU6 (whose masks it gives); hard-swish and GELU recompute their input
from the BatchNorm input, one feature map per unit fewer than torch's
BatchNorm and activation called in turn keep (and timm's). `ConvBnAct`
uses it under torch.compile, and eagerly for those activations
(`RECOMPUTED`); eagerly for the others it calls torch's BatchNorm directly:
there the operator's Python autograd costs time and memory with nothing
to save (measured in `ConvBnAct._torch_batch_norm_train`).
"""

import torch
import torch.nn.functional as F

ACTIVATIONS = ("linear", "relu", "relu6", "hard_swish", "gelu", "gelu_tanh")
_KEEPS_OUTPUT = ("relu", "relu6")
RECOMPUTED = ("hard_swish", "gelu", "gelu_tanh")  # their input, in the backward pass


def _like(value, reference):
    """`value` with `reference`'s strides, which the operators' shape
    functions promise (torch may pick other strides where a dimension is 1)."""
    if value.stride() == reference.stride():
        return value
    return torch.empty_like(reference).copy_(value)


def _activate_(y, activation):
    if activation == "relu":
        return torch.relu_(y)
    if activation == "relu6":
        return y.clamp_(0.0, 6.0)
    if activation == "hard_swish":
        return F.hardswish(y, inplace=True)
    if activation in ("gelu", "gelu_tanh"):
        return F.gelu(y, approximate="tanh" if activation == "gelu_tanh" else "none")
    return y


@torch.library.custom_op("keras_mobilenets::batch_norm_act", mutates_args=())
def _forward(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, epsilon: float,
             activation: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y, mean, invstd = torch.native_batch_norm(x, gamma, beta, None, None, True, 0.0, epsilon)
    return _like(_activate_(y, activation), x), mean, invstd


@_forward.register_fake
def _(x, gamma, beta, epsilon, activation):
    channels = x.shape[1]
    return torch.empty_like(x), x.new_empty(channels), x.new_empty(channels)


@torch.library.custom_op("keras_mobilenets::batch_norm_act_backward", mutates_args=())
def _backward(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None,
              gamma: torch.Tensor, beta: torch.Tensor, mean: torch.Tensor,
              invstd: torch.Tensor, epsilon: float,
              activation: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    aten = torch.ops.aten
    if activation == "relu":
        grad = aten.threshold_backward(grad, y, 0.0)
    elif activation == "relu6":
        # 0 < y < 6 exactly where 0 < BatchNorm output < 6: torch's mask.
        grad = aten.hardtanh_backward(grad, y, 0.0, 6.0)
    elif activation != "linear":
        scale = gamma * invstd
        z = x * scale[:, None, None] + (beta - mean * scale)[:, None, None]
        if activation == "hard_swish":
            grad = aten.hardswish_backward(grad, z)
        else:
            grad = aten.gelu_backward(grad, z, approximate="tanh" if activation == "gelu_tanh"
                                      else "none")
    dx, dgamma, dbeta = aten.native_batch_norm_backward(
        grad, x, gamma, None, None, mean, invstd, True, epsilon, [True, True, True])
    return _like(dx, x), dgamma, dbeta


@_backward.register_fake
def _(grad, x, y, gamma, beta, mean, invstd, epsilon, activation):
    return torch.empty_like(x), torch.empty_like(gamma), torch.empty_like(gamma)


def _setup_context(ctx, inputs, output):
    x, gamma, beta, epsilon, activation = inputs
    y, mean, invstd = output
    ctx.epsilon, ctx.activation = epsilon, activation
    ctx.save_for_backward(x, y if activation in _KEEPS_OUTPUT else None, gamma, beta, mean,
                          invstd)


def _gradient(ctx, grad, _grad_mean, _grad_invstd):
    x, y, gamma, beta, mean, invstd = ctx.saved_tensors
    dx, dgamma, dbeta = _backward(grad, x, y, gamma, beta, mean, invstd, ctx.epsilon,
                                  ctx.activation)
    return dx, dgamma, dbeta, None, None


_forward.register_autograd(_gradient, setup_context=_setup_context)


def batch_norm_act(x, gamma, beta, epsilon, activation):
    """Training BatchNorm of NCHW `x` (any memory layout) with batch
    statistics, then `activation` (one of `ACTIVATIONS`). Returns the output
    and the batch mean and `1 / sqrt(var + epsilon)` (biased variance)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}.")
    return _forward(x, gamma, beta, float(epsilon), activation)
