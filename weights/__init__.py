"""Loading and converting pretrained weights."""

from weights.assign import assign_in_order, leaf_layers, transfer_from_keras_model


def load_into(model, path):
    """Load a weights file into `model`."""
    model.load_weights(path)


__all__ = ["assign_in_order", "leaf_layers", "load_into", "transfer_from_keras_model"]
