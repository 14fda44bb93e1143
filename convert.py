"""Convert a checkpoint (timm, torchvision or keras.applications) into a `.weights.h5` of ours.

Example:
    keras-mobilenets-convert --version v4 --variant conv_medium \\
        --source mobilenetv4_conv_medium.e500_r256_in1k.safetensors \\
        --output mnv4_conv_medium.weights.h5

The output loads with `create_mobilenetv4(variant="conv_medium",
weights="mnv4_conv_medium.weights.h5")` (and the same `--style`), on any
backend, without torch or timm.
"""

import argparse
import sys

from keras_mobilenets import (
    create_mobilenetv1,
    create_mobilenetv2,
    create_mobilenetv3,
    create_mobilenetv4,
    create_mobilenetv5,
)
from keras_mobilenets.architecture import STYLE_NAMES

FACTORIES = {
    "v1": create_mobilenetv1,
    "v2": create_mobilenetv2,
    "v3": create_mobilenetv3,
    "v4": create_mobilenetv4,
    "v5": create_mobilenetv5,
}


def factory(version):
    if version not in FACTORIES:
        raise ValueError(f"Unknown version {version!r}; expected one of {sorted(FACTORIES)}.")
    return FACTORIES[version]


def convert(version, source, output, variant=None, width=1.0, minimalistic=False,
            style=None, include_top=True, num_classes=None):
    """Build the model with `weights=source` and save its weights to `output`."""
    if not output.endswith(".weights.h5"):
        raise ValueError(f"output must end in '.weights.h5', got {output!r}.")
    kwargs = dict(width_multiplier=width, weights=source, style=style,
                  include_top=include_top, num_classes=num_classes,
                  input_shape=(None, None, 3))
    if variant is not None:
        kwargs["variant"] = variant
    if minimalistic:
        kwargs["minimalistic"] = True
    model = factory(version)(**kwargs)
    model.save_weights(output)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--version", required=True, choices=sorted(FACTORIES))
    parser.add_argument("--source", required=True,
                        help="checkpoint file (.safetensors/.pth/.h5) or registry name")
    parser.add_argument("--output", required=True, help="destination .weights.h5")
    parser.add_argument("--variant", default=None)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--minimalistic", action="store_true")
    parser.add_argument("--style", choices=list(STYLE_NAMES), default=None)
    parser.add_argument("--no-top", action="store_true", help="drop the classifier")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="default: 1000, or the named checkpoint's class count")
    args = parser.parse_args(argv)
    model = convert(args.version, args.source, args.output, args.variant, args.width,
                    args.minimalistic, args.style, not args.no_top, args.num_classes)
    print(f"Wrote {args.output}: {model.name}, {model.count_params():,} parameters.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
