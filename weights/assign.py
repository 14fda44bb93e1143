"""Copy arrays into a model's layers, all or nothing.

Weight files come in two layouts: a flat list of per-layer weight groups in
model order (keras.applications `.h5`), or named PyTorch tensors (timm).
Both are turned into `(target_layer, [arrays])` pairs, checked, and only then
written, so a failed load leaves the model as it was.
"""

import numpy as np

_CONTAINERS = ("Functional", "Model", "Sequential")


def leaf_layers(model, chains=False):
    """`(path, layer)` of every layer that owns weights directly, in build order.

    Composite blocks are walked depth-first in the order their sub-layers were
    created, which is the order of the reference implementations' modules.
    `path` is the layer's name path, e.g. `stage1_block0/expand/conv`. With
    `chains=True` each entry is `(path, [outermost, ..., layer])`.
    """
    out = []

    def walk(layer, prefix, chain):
        children = layer._flatten_layers(include_self=False, recursive=False)
        own = [v for v in layer.weights if not any(v is w for c in children for w in c.weights)]
        if own:
            out.append((prefix, chain if chains else layer))
        for child in children:
            walk(child, f"{prefix}/{child.name}" if prefix else child.name, chain + [child])

    for layer in model.layers:
        walk(layer, layer.name, [layer])
    return out


def _fit(array, variable, what):
    """Return `array` in `variable`'s shape, allowing 1x1-conv <-> dense kernels."""
    array = np.asarray(array)
    target = tuple(variable.shape)
    if array.shape == target:
        return array
    squeezed = tuple(d for d in array.shape if d != 1)
    if squeezed == tuple(d for d in target if d != 1) and array.size == np.prod(target):
        return array.reshape(target)
    raise ValueError(
        f"Shape mismatch for {what}: the weights file has {array.shape}, the model's "
        f"variable {variable.path} is {target}. The file is for a different "
        "architecture or width."
    )


def assign(pairs):
    """Write `[(layer, [arrays], source_label)]` into the layers, all or nothing."""
    staged = []
    for layer, arrays, label in pairs:
        variables = layer.weights
        if len(arrays) != len(variables):
            raise ValueError(
                f"{label} has {len(arrays)} weight arrays but layer {layer.name!r} "
                f"({type(layer).__name__}) has {len(variables)}."
            )
        for variable, array in zip(variables, arrays):
            fitted = _fit(array, variable, label)
            if not np.all(np.isfinite(fitted)):
                raise ValueError(f"{label} contains NaN or Inf values.")
            staged.append((variable, fitted))
    for variable, array in staged:
        variable.assign(array.astype(variable.dtype))


def assign_in_order(model, groups, labels):
    """Assign per-layer weight groups to the model's weighted layers in order."""
    leaves = leaf_layers(model)
    if len(groups) != len(leaves):
        raise ValueError(
            f"The weights have {len(groups)} weighted layers but model {model.name!r} "
            f"has {len(leaves)}; the file is for a different architecture "
            "(check variant, width, include_top and minimalistic)."
        )
    assign([(layer, group, label) for (_, layer), group, label in zip(leaves, groups, labels)])


def transfer_from_keras_model(model, reference):
    """Copy the weights of a keras.applications model into ours (same architecture)."""
    layers = [layer for layer in reference.layers if layer.weights]
    assign_in_order(
        model,
        [[np.asarray(w) for w in layer.get_weights()] for layer in layers],
        [f"keras layer {layer.name!r}" for layer in layers],
    )
