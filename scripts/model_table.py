"""Print the README's variant table: parameters, MACs and feature channels.

    python scripts/model_table.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_mobilenets import count_macs, feature_pyramid  # noqa: E402
from mobilenet_v1 import VARIANTS as V1  # noqa: E402
from mobilenet_v1 import create_mobilenetv1
from mobilenet_v2 import VARIANTS as V2  # noqa: E402
from mobilenet_v2 import create_mobilenetv2
from mobilenet_v3 import create_mobilenetv3  # noqa: E402
from mobilenet_v4 import VARIANTS as V4  # noqa: E402
from mobilenet_v4 import create_mobilenetv4

STRIDES = (2, 4, 8, 16, 32)


def rows():
    for v in [k for k in V1 if k != "0.50"]:
        yield f'`create_mobilenetv1("{v}")`', create_mobilenetv1(v), 224
    for v in [k for k in V2 if k != "0.50"]:
        yield f'`create_mobilenetv2("{v}")`', create_mobilenetv2(v), 224
    for v in ("large", "small"):
        for width in (1.0, 0.75):
            yield f'`create_mobilenetv3("{v}", {width})`', create_mobilenetv3(v, width), 224
        yield (f'`create_mobilenetv3("{v}", minimalistic=True)`',
               create_mobilenetv3(v, minimalistic=True), 224)
    for v, config in V4.items():
        yield f'`create_mobilenetv4("{v}")`', create_mobilenetv4(v), config.arch.default_size


def main():
    print("| model | input | parameters (`count_params()`) | trainable | MACs | "
          + " | ".join(f"ch @ /{s}" for s in STRIDES) + " |")
    print("|---|---|---:|---:|---:|" + "---:|" * len(STRIDES))
    for label, model, size in rows():
        trainable = sum(int(w.numpy().size) if hasattr(w, "numpy") else 0
                        for w in model.trainable_weights)
        features = feature_pyramid(model, STRIDES)
        channels = [features.output[f"stride_{s}"].shape[-1] for s in STRIDES]
        print(f"| {label} | {size} | {model.count_params():,} | {trainable:,} | "
              f"{count_macs(model) / 1e6:,.1f} M | " + " | ".join(map(str, channels)) + " |")


if __name__ == "__main__":
    main()
