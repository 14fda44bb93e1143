"""Print the README's variant table: parameters, MACs and feature channels.

    python scripts/model_table.py [WORD ...]   # only the rows whose call contains a WORD
"""

import sys

import numpy as np

from keras_mobilenets import (
    count_macs,
    create_mobilenetv1,
    create_mobilenetv2,
    create_mobilenetv3,
    create_mobilenetv4,
    create_mobilenetv5,
    feature_pyramid,
)
from keras_mobilenets.mobilenet_v1 import VARIANTS as V1
from keras_mobilenets.mobilenet_v2 import VARIANTS as V2
from keras_mobilenets.mobilenet_v4 import VARIANTS as V4

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
        if v == "large":
            for timm_variant in ("large_150d", "rw"):
                yield (f'`create_mobilenetv3("{timm_variant}")`', create_mobilenetv3(timm_variant),
                       224)
    for v, config in V4.items():
        yield f'`create_mobilenetv4("{v}")`', create_mobilenetv4(v), config.arch.default_size
    # timm's mobilenetv5_300m has no classifier by default; its count is the encoder's.
    yield ('`create_mobilenetv5("300m", include_top=False)`',
           create_mobilenetv5("300m", include_top=False), 768)


def main(only=None):
    print("| model | input | parameters (`count_params()`) | trainable | MACs | "
          + " | ".join(f"ch @ /{s}" for s in STRIDES) + " |")
    print("|---|---|---:|---:|---:|" + "---:|" * len(STRIDES))
    for label, model, size in rows():
        if only and not any(word in label for word in only):
            continue
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        features = feature_pyramid(model, STRIDES)
        channels = [features.output[f"stride_{s}"].shape[-1] for s in STRIDES]
        print(f"| {label} | {size} | {model.count_params():,} | {trainable:,} | "
              f"{count_macs(model) / 1e6:,.1f} M | " + " | ".join(map(str, channels)) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
