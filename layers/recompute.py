"""Tensors a torch training step recomputes instead of keeping.

V3's built-in `Rescaling` turns the image batch into a second batch-sized
tensor, and the stem convolution keeps that one for its kernel gradient,
so a training step held two copies of the batch where timm's, fed
normalised images, holds one (V3 small at batch 32 and 224²: 18.4 MiB of
0.52 GB, counted in `docs/training_memory.md`). The batch itself is alive
through the step anyway, and rescaling it again costs one elementwise pass.

While `recording()` is active (`FastFunctional.train_step` on torch), a
layer registers an output it can rebuild (`register`); when autograd saves
that tensor, or a view of it, for the backward pass, `_pack` stores the
recipe instead and `_unpack` rebuilds it, bit for bit (the same
elementwise operations on the same inputs). Anything else is saved as
usual. Outside `recording()` (a user's own loop, inference) nothing
changes.
"""

import contextlib
import weakref

import torch

_state = {"entries": None}


class _Recipe:
    """What `_unpack` needs to rebuild a saved tensor: `fn(*args)`, then
    the saved tensor's view of it."""

    __slots__ = ("fn", "args", "size", "stride", "offset")

    def __init__(self, fn, args, saved):
        self.fn, self.args = fn, args
        self.size, self.stride, self.offset = saved.size(), saved.stride(), saved.storage_offset()


def register(output, fn, *args):
    """Note that `output` equals `fn(*args)`, where `args` stay alive
    through the step; no-op outside `recording()`, without autograd, or
    for an output that is itself a strided view (rebuilt, it would not
    have its layout)."""
    entries = _state["entries"]
    if (entries is not None and torch.is_grad_enabled() and output.is_contiguous()
            and output.storage_offset() == 0):
        entries[output.untyped_storage().data_ptr()] = (weakref.ref(output), output._version,
                                                         fn, args)


def _pack(saved):
    entries = _state["entries"]
    entry = entries.get(saved.untyped_storage().data_ptr()) if entries else None
    if entry is not None:
        ref, version, fn, args = entry
        # The registered tensor still alive (so its memory was not reused)
        # and not written in place since.
        if ref() is not None and saved._version == version:
            return _Recipe(fn, args, saved)
    return saved


def _unpack(packed):
    if isinstance(packed, _Recipe):
        rebuilt = packed.fn(*packed.args).contiguous()
        return rebuilt.as_strided(packed.size, packed.stride, packed.offset)
    return packed


@contextlib.contextmanager
def recording():
    """Rebuild the registered tensors in the backward passes of what runs
    inside (forward and backward both inside: the recipes hold their
    inputs until the graph is freed)."""
    if _state["entries"] is not None:  # nested: the outer one records
        yield
        return
    _state["entries"] = {}
    try:
        with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
            yield
    finally:
        _state["entries"] = None
