"""The published ImageNet checkpoints, with where to get them and how to feed them.

Two families:

* keras.applications `.h5` files (TF-slim weights, TF SAME padding, BN eps
  1e-3) for V1-V3, with separate no-top files. keras.applications publishes
  md5 hashes for V3 and none for V1/V2; those are checked on download.
* timm `model.safetensors` files from the `timm/<arch>.<tag>` hub
  repositories for V1-V4. Most use symmetric padding and BN eps 1e-5; the
  `tf_mobilenetv3_*` ports use TF SAME padding and eps 1e-3. The hub serves
  no hash we could pin offline, so these are verified by the strict
  tensor-by-tensor shape check of the loader instead.

torchvision's `mobilenet_v2` / `mobilenet_v3_*` `.pth` files (symmetric
padding, checked against the sha256 prefix in their names) are registered by
`weights/torchvision.py`.

`register_checkpoint` adds entries (e.g. a private mirror).
"""

from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"
HF_BASE = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"


@dataclass(frozen=True)
class Checkpoint:
    """A pretrained checkpoint and everything needed to use it.

    Attributes:
        name: registry name, e.g. "timm/mobilenetv4_conv_medium.e500_r256_in1k".
        version: "v1" ... "v4".
        variant: the factory's variant for it (None for V1/V2, where the width
            says everything).
        width: effective width multiplier.
        minimalistic: MobileNetV3 minimalistic form.
        format: "keras" (legacy `.h5`, matched layer by layer in order),
            "timm" (safetensors state_dict, matched by module name) or
            "torchvision" (`.pth` state_dict, matched by module name).
        style: the factory style the weights need ("keras", "timm" or
            "torchvision").
        url, file_hash: the full-model file and its hash (md5 or sha256, or
            None when the publisher gives none).
        no_top_url, no_top_hash: keras.applications' file without the top.
        num_classes, input_size, crop_pct, interpolation, mean, std: how the
            checkpoint was trained and is evaluated; `mean`/`std` apply to
            RGB inputs scaled to [0, 1].
    """

    name: str
    version: str
    variant: str | None
    width: float
    format: str
    style: str
    url: str
    file_hash: str | None = None
    no_top_url: str | None = None
    no_top_hash: str | None = None
    minimalistic: bool = False
    num_classes: int = 1000
    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple = INCEPTION_MEAN
    std: tuple = INCEPTION_STD
    aliases: tuple = field(default=(), compare=False)

    @property
    def arch(self):
        return (self.version, self.variant, round(self.width, 4), self.minimalistic)

    def preprocessing(self):
        """How to prepare inputs: resize/crop and per-channel mean/std on [0, 1]."""
        return dict(
            input_size=self.input_size,
            crop_pct=self.crop_pct,
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
        )


CHECKPOINTS = {}
# (version, variant, width, minimalistic, style) -> default checkpoint name
DEFAULTS = {}


def register_checkpoint(checkpoint, default=False):
    """Add a checkpoint; with `default=True` it is what `weights="imagenet"` picks."""
    for key in (checkpoint.name, *checkpoint.aliases):
        CHECKPOINTS[key] = checkpoint
    if default:
        DEFAULTS[checkpoint.arch + (checkpoint.style,)] = checkpoint.name
    return checkpoint


def _keras_v1():
    for alpha, text in [(1.0, "1_0"), (0.75, "7_5"), (0.5, "5_0"), (0.25, "2_5")]:
        for rows in (224, 192, 160, 128):
            stem = f"mobilenet_{text}_{rows}_tf"
            register_checkpoint(
                Checkpoint(
                    f"keras/{stem}", "v1", None, alpha, "keras", "keras",
                    url=f"{KERAS_BASE}mobilenet/{stem}.h5",
                    no_top_url=f"{KERAS_BASE}mobilenet/{stem}_no_top.h5",
                    input_size=rows,
                ),
                default=rows == 224,
            )


def _keras_v2():
    for alpha in (1.0, 0.75, 0.5, 0.35, 1.3, 1.4):
        for rows in (224, 192, 160, 128, 96):
            stem = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}"
            register_checkpoint(
                Checkpoint(
                    f"keras/mobilenet_v2_{alpha}_{rows}", "v2", None, alpha, "keras", "keras",
                    url=f"{KERAS_BASE}mobilenet_v2/{stem}.h5",
                    no_top_url=f"{KERAS_BASE}mobilenet_v2/{stem}_no_top.h5",
                    input_size=rows,
                ),
                default=rows == 224,
            )


# keras.applications' WEIGHTS_HASHES (md5), (with top, without top).
_KERAS_V3_HASHES = {
    ("large", 0.75, False): ("765b44a33ad4005b3ac83185abf1d0eb", "40af19a13ebea4e2ee0c676887f69a2e"),
    ("large", 1.0, False): ("59e551e166be033d707958cf9e29a6a7", "07fb09a5933dd0c8eaafa16978110389"),
    ("large", 1.0, True): ("675e7b876c45c57e9e63e6d90a36599c", "ec5221f64a2f6d1ef965a614bdae7973"),
    ("small", 0.75, False): ("cb65d4e5be93758266aa0a7f2c6708b7", "ebdb5cc8e0b497cd13a7c275d475c819"),
    ("small", 1.0, False): ("8768d4c2e7dee89b9d02b2d03d65d862", "d3e8ec802a04aa4fc771ee12a9a9b836"),
    ("small", 1.0, True): ("99cd97fb2fcdad2bf028eb838de69e37", "cde8136e733e811080d9fcd8a252f7e4"),
}


def _keras_v3():
    for (variant, alpha, minimal), (top_hash, no_top_hash) in _KERAS_V3_HASHES.items():
        stem = f"weights_mobilenet_v3_{variant}{'_minimalistic' if minimal else ''}_224_{alpha}_float"
        register_checkpoint(
            Checkpoint(
                f"keras/mobilenet_v3_{variant}{'_minimalistic' if minimal else ''}_{alpha}",
                "v3", variant, alpha, "keras", "keras",
                url=f"{KERAS_BASE}mobilenet_v3/{stem}.h5",
                file_hash=top_hash,
                no_top_url=f"{KERAS_BASE}mobilenet_v3/{stem}_no_top_v2.h5",
                no_top_hash=no_top_hash,
                minimalistic=minimal,
            ),
            default=True,
        )


_IMNET = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)
_INCEP = dict(mean=INCEPTION_MEAN, std=INCEPTION_STD)
# timm hub checkpoints (spec §9): (arch.tag, version, variant, width, style,
# preprocessing and size); the first one listed per architecture and style is
# the `weights="imagenet"` default.
_TIMM = [
    ("mobilenetv1_100.ra4_e3600_r224_in1k", "v1", None, 1.0, "timm", dict(crop_pct=0.875, **_INCEP)),
    ("mobilenetv1_125.ra4_e3600_r224_in1k", "v1", None, 1.25, "timm", dict(crop_pct=0.9, **_INCEP)),
    ("mobilenetv1_100h.ra4_e3600_r224_in1k", "v1", "100h", 1.0, "timm", dict(crop_pct=0.875, **_INCEP)),
    ("mobilenetv2_100.ra_in1k", "v2", None, 1.0, "timm", _IMNET),
    ("mobilenetv2_050.lamb_in1k", "v2", None, 0.5, "timm", _IMNET),
    ("mobilenetv2_140.ra_in1k", "v2", None, 1.4, "timm", _IMNET),
    ("mobilenetv2_110d.ra_in1k", "v2", "110d", 1.1, "timm", _IMNET),
    ("mobilenetv2_120d.ra_in1k", "v2", "120d", 1.2, "timm", _IMNET),
    ("mobilenetv3_large_100.ra_in1k", "v3", "large", 1.0, "timm", _IMNET),
    ("mobilenetv3_large_100.ra4_e3600_r224_in1k", "v3", "large", 1.0, "timm", dict(crop_pct=0.95, **_INCEP)),
    ("mobilenetv3_large_100.miil_in21k_ft_in1k", "v3", "large", 1.0, "timm",
     dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bilinear")),
    ("mobilenetv3_large_150d.ra4_e3600_r256_in1k", "v3", "large_150d", 1.5, "timm",
     dict(input_size=256, crop_pct=0.95, interpolation="bilinear", **_INCEP)),
    ("mobilenetv3_rw.rmsp_in1k", "v3", "rw", 1.0, "timm", _IMNET),
    ("mobilenetv3_large_100.miil_in21k", "v3", "large", 1.0, "timm",
     dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_classes=11221, interpolation="bilinear")),
    ("mobilenetv3_small_100.lamb_in1k", "v3", "small", 1.0, "timm", _IMNET),
    ("mobilenetv3_small_075.lamb_in1k", "v3", "small", 0.75, "timm", _IMNET),
    ("mobilenetv3_small_050.lamb_in1k", "v3", "small", 0.5, "timm", _IMNET),
    ("tf_mobilenetv3_large_100.in1k", "v3", "large", 1.0, "keras", _INCEP),
    ("tf_mobilenetv3_large_075.in1k", "v3", "large", 0.75, "keras", _INCEP),
    ("tf_mobilenetv3_large_minimal_100.in1k", "v3", "large", 1.0, "keras", dict(minimalistic=True, **_INCEP)),
    ("tf_mobilenetv3_small_100.in1k", "v3", "small", 1.0, "keras", _INCEP),
    ("tf_mobilenetv3_small_075.in1k", "v3", "small", 0.75, "keras", _INCEP),
    ("tf_mobilenetv3_small_minimal_100.in1k", "v3", "small", 1.0, "keras", dict(minimalistic=True, **_INCEP)),
    ("mobilenetv4_conv_small.e2400_r224_in1k", "v4", "conv_small", 1.0, "timm", dict(**_IMNET)),
    ("mobilenetv4_conv_small.e1200_r224_in1k", "v4", "conv_small", 1.0, "timm", dict(**_IMNET)),
    ("mobilenetv4_conv_small.e3600_r256_in1k", "v4", "conv_small", 1.0, "timm",
     dict(input_size=256, crop_pct=0.95, **_INCEP)),
    ("mobilenetv4_conv_small_050.e3000_r224_in1k", "v4", "conv_small", 0.5, "timm", dict(**_INCEP)),
    ("mobilenetv4_conv_medium.e500_r256_in1k", "v4", "conv_medium", 1.0, "timm",
     dict(input_size=256, crop_pct=0.95, **_IMNET)),
    ("mobilenetv4_conv_medium.e500_r224_in1k", "v4", "conv_medium", 1.0, "timm", dict(crop_pct=0.95, **_IMNET)),
    ("mobilenetv4_conv_medium.e250_r384_in12k_ft_in1k", "v4", "conv_medium", 1.0, "timm",
     dict(input_size=384, crop_pct=0.95, **_IMNET)),
    ("mobilenetv4_conv_medium.e180_r384_in12k", "v4", "conv_medium", 1.0, "timm",
     dict(input_size=384, crop_pct=1.0, num_classes=11821, **_IMNET)),
    ("mobilenetv4_conv_medium.e180_ad_r384_in12k", "v4", "conv_medium", 1.0, "timm",
     dict(input_size=384, crop_pct=1.0, num_classes=11821, **_IMNET)),
    ("mobilenetv4_conv_medium.e250_r384_in12k", "v4", "conv_medium", 1.0, "timm",
     dict(input_size=384, crop_pct=1.0, num_classes=11821, **_IMNET)),
    ("mobilenetv4_conv_blur_medium.e500_r224_in1k", "v4", "conv_blur_medium", 1.0, "timm",
     dict(crop_pct=0.95, **_IMNET)),
    ("mobilenetv4_conv_large.e600_r384_in1k", "v4", "conv_large", 1.0, "timm",
     dict(input_size=384, crop_pct=0.95, **_IMNET)),
    ("mobilenetv4_conv_large.e500_r256_in1k", "v4", "conv_large", 1.0, "timm",
     dict(input_size=256, crop_pct=0.95, **_IMNET)),
    ("mobilenetv4_conv_aa_large.e600_r384_in1k", "v4", "conv_aa_large", 1.0, "timm",
     dict(input_size=384, crop_pct=0.95, **_IMNET)),
    ("mobilenetv4_conv_aa_large.e230_r384_in12k_ft_in1k", "v4", "conv_aa_large", 1.0, "timm",
     dict(input_size=384, crop_pct=0.95, **_IMNET)),
    ("mobilenetv4_conv_aa_large.e230_r448_in12k_ft_in1k", "v4", "conv_aa_large", 1.0, "timm",
     dict(input_size=448, crop_pct=0.95, **_IMNET)),
    ("mobilenetv4_conv_aa_large.e230_r384_in12k", "v4", "conv_aa_large", 1.0, "timm",
     dict(input_size=384, crop_pct=0.95, num_classes=11821, **_IMNET)),
    ("mobilenetv4_hybrid_medium.ix_e550_r256_in1k", "v4", "hybrid_medium", 1.0, "timm",
     dict(input_size=256, crop_pct=0.95, **_IMNET)),
    ("mobilenetv4_hybrid_medium.ix_e550_r384_in1k", "v4", "hybrid_medium", 1.0, "timm",
     dict(input_size=384, crop_pct=0.95, **_IMNET)),
    ("mobilenetv4_hybrid_medium.e500_r224_in1k", "v4", "hybrid_medium", 1.0, "timm", dict(crop_pct=0.95, **_IMNET)),
    ("mobilenetv4_hybrid_medium.e200_r256_in12k_ft_in1k", "v4", "hybrid_medium", 1.0, "timm",
     dict(input_size=256, crop_pct=0.95, **_IMNET)),
    ("mobilenetv4_hybrid_medium.e200_r256_in12k", "v4", "hybrid_medium", 1.0, "timm",
     dict(input_size=256, crop_pct=0.95, num_classes=11821, **_IMNET)),
    ("mobilenetv4_hybrid_large.ix_e600_r384_in1k", "v4", "hybrid_large", 1.0, "timm",
     dict(input_size=384, crop_pct=0.95, **_IMNET)),
    ("mobilenetv4_hybrid_large.e600_r384_in1k", "v4", "hybrid_large", 1.0, "timm",
     dict(input_size=384, crop_pct=0.95, **_IMNET)),
    # Gemma 3n's vision encoder: no classifier.
    ("mobilenetv5_300m.gemma3n", "v5", "300m", 1.0, "timm",
     dict(input_size=768, crop_pct=1.0, num_classes=0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))),
]


def _timm():
    for hub_id, version, variant, width, style, extra in _TIMM:
        extra = dict(extra)
        ckpt = Checkpoint(
            f"timm/{hub_id}", version, variant, width, "timm", style,
            url=HF_BASE.format(hub_id),
            minimalistic=extra.pop("minimalistic", False),
            interpolation=extra.pop(
                "interpolation", "bilinear" if hub_id.startswith("tf_") else "bicubic"
            ),
            aliases=(hub_id,),
            **extra,
        )
        # keras.applications files stay the default where both exist.
        is_default = ckpt.arch + (style,) not in DEFAULTS and ckpt.num_classes == 1000
        register_checkpoint(ckpt, default=is_default)


_keras_v1()
_keras_v2()
_keras_v3()
_timm()


def get_checkpoint(name):
    """Look up a checkpoint by registry name (with or without the `timm/` prefix)."""
    try:
        return CHECKPOINTS[name]
    except KeyError:
        raise ValueError(
            f"Unknown checkpoint {name!r}. Known checkpoints: {sorted(n for n in CHECKPOINTS if '/' in n)}."
        ) from None


def checkpoints_for(version, variant, width, minimalistic=False):
    arch = (version, variant, round(width, 4), minimalistic)
    return sorted({c.name for c in CHECKPOINTS.values() if c.arch == arch})


def default_checkpoint(version, variant, width, minimalistic, style, input_size=None):
    """The `weights="imagenet"` checkpoint for an architecture, or ValueError."""
    key = (version, variant, round(width, 4), minimalistic, style)
    name = DEFAULTS.get(key)
    if name is None:
        available = checkpoints_for(version, variant, width, minimalistic)
        raise ValueError(
            f"No ImageNet weights are published for MobileNet{version.upper()} "
            f"variant={variant!r}, width={width:g}, minimalistic={minimalistic}, style={style!r}. "
            + (f"Checkpoints for this architecture: {available}." if available else
               "Use weights=None, or a width/variant with published weights.")
        )
    checkpoint = CHECKPOINTS[name]
    if checkpoint.format == "keras" and input_size != checkpoint.input_size:
        # keras.applications publishes V1/V2 weights per input size.
        for other in CHECKPOINTS.values():
            if (other.arch, other.format, other.input_size) == (
                checkpoint.arch, "keras", input_size
            ):
                return other
    return checkpoint
