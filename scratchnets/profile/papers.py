"""The published tables, as data: every number ``scratchnets verify`` recomputes.

Every number carries its source (a key of ``SOURCES``: the paper with its arXiv id, or the
framework table) and where in it (table, section). A ``PaperRow`` says which model configuration a number describes, what
quantity it is, under which counting convention (``conventions.py``), and the value exactly as
printed. The tolerance is implied by the printing: a value with last digit of size u (``"4.2"``
M: u = 0.1 M) matches a count C that rounds to it (|C - P| <= u/2) or truncates to it
(P <= C < P + u); the papers do both (e.g. [V1] prints 568.7 M as 569 but 290.7 M as 290).

Where a published number is wrong, the row carries an ``Erratum``: what is wrong, where a reader
can see it (``documented``: the sources to compare), and the corrected value, configuration or
quantity that does reproduce. A few errata were found by this counter (``documented`` says so);
their corrections come from the paper's own data and formulas (another table entry, eq. 7's
rho^2 scaling), never from the count alone.

Also here: [V1] Table 1 and [V2] Table 2 verbatim as layer lists, so that ``verify`` can build the
networks exactly as printed; and ``SEEDS_TABLE``, the eight configurations the project's seed
compares, each citing the rows above that publish numbers for exactly that configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

SOURCES = {
    "V1": "Howard et al. 2017, MobileNets, arXiv 1704.04861",
    "V2": "Sandler et al. 2018, MobileNetV2, arXiv 1801.04381",
    "V3": "Howard et al. 2019, Searching for MobileNetV3, arXiv 1905.02244",
    "slim-V1": "tensorflow/models research/slim/nets/mobilenet_v1.md (checkpoint table)",
    "slim-V2": "tensorflow/models research/slim/nets/mobilenet/README.md (checkpoint table)",
    "slim-V3": "tensorflow/models research/slim/nets/mobilenet/README.md (V3 checkpoint table)",
    "keras-table-old": "keras-io templates/api/applications/index.md (exact parameter counts)",
    "keras-table-new": "Keras Applications documentation (current table, rounded)",
    "tf-keras-doc": "tf.compat.v1.keras.applications.mobilenet docstring (TF r2.2/r2.4)",
    "tv": "torchvision docs / MobileNet_V2_Weights and MobileNet_V3_*_Weights metadata",
    "timm-res": "pytorch-image-models results/results-imagenet.csv",
    "timm-card": "timm model cards <model>.in1k",
    "GN": "Han et al. 2020, GhostNet, arXiv 1911.11907 (Table 8 via secondary sources)",
    "GN-code": "huawei-noah/Efficient-AI-Backbones ghostnet_pytorch readme",
    "GNv2": "Tang et al. 2022, GhostNetV2, arXiv 2211.12905 (abstract / README)",
    "GNv3": "Liu et al. 2024, GhostNetV3, arXiv 2404.11202 (abstract)",
    "iFormer": "iFormer paper (ICLR 2025) comparison table, third party",
    "COUNT": "a count of the official code's layer shapes (a cross-check, not a published number)",
    "seed": "the project's seed cost formulas (depthwise-separable and factorised kernels)",
}

UNITS = {"": 1, "%": 1, "M": 10**6, "G": 10**9}


@dataclass(frozen=True)
class ModelConfig:
    """What to build: a ``scratchnets.models`` name or a ``verify.BUILDERS`` name, the width
    multiplier, the input resolution (square), the classes and extra builder options."""

    name: str
    width: float = 1.0
    resolution: int = 224
    classes: int = 1000
    options: tuple[tuple[str, object], ...] = ()

    def label(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.options)
        classes = "" if self.classes == 1000 else f", {self.classes} classes"
        return f"{self.name} {self.width:g}x @{self.resolution}{classes}{extra}"


@dataclass(frozen=True)
class Erratum:
    """A documented error in a published number and what reproduces instead.

    Exactly the fields that change are set: ``corrected`` (the right value, printed in the row's
    unit), ``config`` (the configuration the paper must have meant) or ``quantity`` (what the
    number really counts). ``documented``: where the erratum is documented.
    """

    note: str
    documented: str
    corrected: str | None = None
    config: ModelConfig | None = None
    quantity: str | None = None


@dataclass(frozen=True)
class PaperRow:
    """One published number.

    ``quantity``: "params" (under ``convention``), "macs" (conv + FC mult-adds per image),
    "conv_macs" (conv layers only), "macs_se_scale" (macs + the SE gates' x * g multiplies), "macs_pct:<kind>" / "weights_pct:<kind>" (share of the total
    for one ``summary.layer_kind``), "depthwise_layers", "macs_ratio" / "macs_saving_pct" (this
    config against ``reference``; ``formula`` names the closed form in ``verify.FORMULAS``).
    ``published``: as printed, in ``unit`` ("", "%", "M", "G").
    """

    key: str
    source: str
    where: str
    description: str
    config: ModelConfig
    quantity: str
    published: str
    unit: str = "M"
    convention: str = "macs"
    erratum: Erratum | None = None
    unconfirmed: bool = False
    reference: ModelConfig | None = None
    formula: str | None = None

    def value(self, printed: str | None = None) -> float:
        """The printed number (or ``printed``) in base units (e.g. "4.2" M -> 4_200_000)."""
        return float(Decimal((printed or self.published).replace(",", "")) * UNITS[self.unit])

    def step(self, printed: str | None = None) -> float:
        """Size of the last printed digit, in base units ("4.2" M -> 100_000)."""
        exponent = Decimal((printed or self.published).replace(",", "")).as_tuple().exponent
        return float(Decimal(1).scaleb(exponent) * UNITS[self.unit])


# ------------------------------------------------------------------ the tables as printed


@dataclass(frozen=True)
class V1Layer:
    """One line of [V1] Table 1: type, stride, filter shape, input size (H, W, C).

    ``repeat``: the "5x" brace, which covers a dw line and the pw line after it."""

    type: str  # "Conv", "Conv dw", "Avg Pool", "FC"
    stride: int
    filter: tuple[int, ...]
    input: tuple[int, int, int]
    repeat: int = 1


#: [V1] Table 1, "MobileNet Body Architecture", line by line
V1_TABLE1 = (
    V1Layer("Conv", 2, (3, 3, 3, 32), (224, 224, 3)),
    V1Layer("Conv dw", 1, (3, 3, 32), (112, 112, 32)),
    V1Layer("Conv", 1, (1, 1, 32, 64), (112, 112, 32)),
    V1Layer("Conv dw", 2, (3, 3, 64), (112, 112, 64)),
    V1Layer("Conv", 1, (1, 1, 64, 128), (56, 56, 64)),
    V1Layer("Conv dw", 1, (3, 3, 128), (56, 56, 128)),
    V1Layer("Conv", 1, (1, 1, 128, 128), (56, 56, 128)),
    V1Layer("Conv dw", 2, (3, 3, 128), (56, 56, 128)),
    V1Layer("Conv", 1, (1, 1, 128, 256), (28, 28, 128)),
    V1Layer("Conv dw", 1, (3, 3, 256), (28, 28, 256)),
    V1Layer("Conv", 1, (1, 1, 256, 256), (28, 28, 256)),
    V1Layer("Conv dw", 2, (3, 3, 256), (28, 28, 256)),
    V1Layer("Conv", 1, (1, 1, 256, 512), (14, 14, 256)),
    V1Layer("Conv dw", 1, (3, 3, 512), (14, 14, 512), repeat=5),
    V1Layer("Conv", 1, (1, 1, 512, 512), (14, 14, 512), repeat=5),
    V1Layer("Conv dw", 2, (3, 3, 512), (14, 14, 512)),
    V1Layer("Conv", 1, (1, 1, 512, 1024), (7, 7, 512)),
    V1Layer("Conv dw", 2, (3, 3, 1024), (7, 7, 1024)),  # printed "s2" (sic): must be s1
    V1Layer("Conv", 1, (1, 1, 1024, 1024), (7, 7, 1024)),
    V1Layer("Avg Pool", 1, (7, 7), (7, 7, 1024)),
    V1Layer("FC", 1, (1024, 1000), (1, 1, 1024)),
)
#: index in V1_TABLE1 of the depthwise line printed with stride 2 at 7x7x1024
V1_TABLE1_TYPO = 17


@dataclass(frozen=True)
class V2Line:
    """One line of [V2] Table 2: expansion t, output channels c, repeats n, first stride s."""

    input: str
    operator: str
    t: int | None
    c: int | None
    n: int
    s: int | None


#: [V2] Table 2; c=None in the last line is the number of classes k
V2_TABLE2 = (
    V2Line("224²×3", "conv2d", None, 32, 1, 2),
    V2Line("112²×32", "bottleneck", 1, 16, 1, 1),
    V2Line("112²×16", "bottleneck", 6, 24, 2, 2),
    V2Line("56²×24", "bottleneck", 6, 32, 3, 2),
    V2Line("28²×32", "bottleneck", 6, 64, 4, 2),
    V2Line("14²×64", "bottleneck", 6, 96, 3, 1),
    V2Line("14²×96", "bottleneck", 6, 160, 3, 2),
    V2Line("7²×160", "bottleneck", 6, 320, 1, 1),
    V2Line("7²×320", "conv2d 1×1", None, 1280, 1, 1),
    V2Line("7²×1280", "avgpool 7×7", None, None, 1, None),
    V2Line("1×1×1280", "conv2d 1×1", None, None, 1, None),
)


# ---------------------------------------------------------------------------- the rows

_FOUND_HERE = "found by scratchnets verify"


def _cfg(name: str, width: float = 1.0, resolution: int = 224, classes: int = 1000, **options):
    return ModelConfig(name, width, resolution, classes, tuple(sorted(options.items())))


V1 = _cfg("mobilenet_v1")
V2 = _cfg("mobilenet_v2")


def _v1_rows() -> list[PaperRow]:
    rows = [
        PaperRow(
            "V1-T1-macs", "V1", "Table 1 (+ Table 6)",
            "MobileNet body built line by line from Table 1 as printed",
            _cfg("v1_table1"), "macs", "569",
            erratum=Erratum(
                "Table 1 prints stride 2 for the depthwise conv at 7x7x1024; its input is already "
                "7x7, the 7x7 avg pool follows, Keras uses stride 1 (only block 12 is strided). "
                "As printed the body costs far less than 569 M; with stride 1 it reproduces",
                "[V1] Table 1 against Table 6's 569 M and Keras' MobileNet (stride 1 at 7x7)",
                config=_cfg("v1_table1", strides=((V1_TABLE1_TYPO, 1),)),
            ),
        ),
    ]  # fmt: skip
    # Table 2: share of mult-adds and of parameters (conv + FC weights) per layer type
    for kind, label, macs_pct, params_pct in (
        ("pointwise 1x1", "Conv 1x1", "94.86", "74.59"),
        ("depthwise 3x3", "Conv DW 3x3", "3.06", "1.06"),
        ("conv 3x3", "Conv 3x3", "1.19", "0.02"),
        ("fully connected", "Fully Connected", "0.18", "24.33"),
    ):
        erratum = None
        if label == "Conv 3x3":
            erratum = Erratum(
                "digits transposed: 1.91 % makes the column sum to 100.01 % (as printed: 99.29 %)",
                "[V1] Table 2: the Mult-Adds column sums to 99.29 % as printed",
                corrected="1.91",
            )
        rows += [
            PaperRow(f"V1-T2-macs-{kind}", "V1", "Table 2", f"{label}: share of Mult-Adds",
                     V1, f"macs_pct:{kind}", macs_pct, "%", erratum=erratum),
            PaperRow(f"V1-T2-params-{kind}", "V1", "Table 2", f"{label}: share of parameters",
                     V1, f"weights_pct:{kind}", params_pct, "%", "weights"),
        ]  # fmt: skip
    # Table 3: one 14x14x512 -> 512 layer under successive modifications
    for label, config, macs, params in (
        ("Convolution", _cfg("standard_conv", 1.0, 14, M=512, N=512, K=3), "462", "2.36"),
        ("Depthwise Separable Conv", _cfg("separable_conv", 1.0, 14, M=512, N=512, K=3), "52.3",
         "0.27"),
        ("alpha = 0.75", _cfg("separable_conv", 0.75, 14, M=512, N=512, K=3), "29.6", "0.15"),
        ("rho = 0.714", _cfg("separable_conv", 0.75, 10, M=512, N=512, K=3), "15.1", "0.15"),
    ):  # fmt: skip
        rows += [
            PaperRow(f"V1-T3-macs-{label}", "V1", "Table 3", f"{label} (14x14x512 layer)",
                     config, "macs", macs),
            PaperRow(f"V1-T3-params-{label}", "V1", "Table 3", f"{label} (14x14x512 layer)",
                     config, "params", params, convention="weights"),
        ]  # fmt: skip
    # Table 4: separable vs full convolutions; Table 5: narrow vs shallow
    conv_only = Erratum(
        "reproduces only without the FC layer's 1.02 M mult-adds (conv layers alone), although "
        "the MobileNet rows (569 M) include it",
        _FOUND_HERE,
        quantity="conv_macs",
    )
    for key, where, label, config, macs, params, erratum in (
        ("V1-T4-conv", "Table 4", "Conv MobileNet (every separable pair a full 3x3 conv)",
         _cfg("v1_table1", full_conv=True, strides=((V1_TABLE1_TYPO, 1),)), "4866", "29.3",
         conv_only),
        ("V1-T4-mobilenet", "Table 4", "MobileNet", V1, "569", "4.2", None),
        ("V1-T5-narrow", "Table 5", "0.75 MobileNet", _cfg("mobilenet_v1", 0.75), "325", "2.6",
         None),
        ("V1-T5-shallow", "Table 5", "Shallow MobileNet (no 5x separable at 14x14x512)",
         _cfg("v1_table1", shallow=True, strides=((V1_TABLE1_TYPO, 1),)), "307", "2.9", None),
    ):  # fmt: skip
        rows += [
            PaperRow(f"{key}-macs", "V1", where, label, config, "macs", macs, erratum=erratum),
            PaperRow(f"{key}-params", "V1", where, label, config, "params", params,
                     convention="weights"),
        ]  # fmt: skip
    # Tables 6 and 7: width and resolution multipliers
    for width, macs, params in (
        (1.0, "569", "4.2"), (0.75, "325", "2.6"), (0.5, "149", "1.3"), (0.25, "41", "0.5")
    ):  # fmt: skip
        config = _cfg("mobilenet_v1", width)
        rows += [
            PaperRow(f"V1-T6-{width}-macs", "V1", "Table 6", f"{width} MobileNet-224", config,
                     "macs", macs),
            PaperRow(f"V1-T6-{width}-params", "V1", "Table 6", f"{width} MobileNet-224", config,
                     "params", params, convention="weights"),
        ]  # fmt: skip
    for resolution, macs in ((224, "569"), (192, "418"), (160, "290"), (128, "186")):
        config = _cfg("mobilenet_v1", 1.0, resolution)
        rows += [
            PaperRow(f"V1-T7-{resolution}-macs", "V1", "Table 7",
                     f"1.0 MobileNet-{resolution}", config, "macs", macs),
            PaperRow(f"V1-T7-{resolution}-params", "V1", "Table 7",
                     f"1.0 MobileNet-{resolution}", config, "params", "4.2",
                     convention="weights"),
        ]  # fmt: skip
    # Tables 8 and 9: comparisons with other networks
    vgg = _cfg("vgg16")
    rows += [
        PaperRow("V1-T8-vgg16-macs", "V1", "Table 8", "VGG 16 (printed 15300 million)", vgg,
                 "macs", "15.3", "G",
                 erratum=Erratum(
                     "15.3 G is VGG16's conv layers alone (15.35 G); its three FC layers add "
                     "0.12 G (102.8 + 16.8 + 4.1 M) for 15.47 G in total", _FOUND_HERE,
                     quantity="conv_macs")),
        PaperRow("V1-T8-vgg16-params", "V1", "Table 8", "VGG 16", vgg, "params", "138",
                 convention="trainable"),
        PaperRow("V1-T9-0.5-160-macs", "V1", "Table 9", "0.50 MobileNet-160",
                 _cfg("mobilenet_v1", 0.5, 160), "macs", "76"),
        PaperRow("V1-T9-0.5-160-params", "V1", "Table 9", "0.50 MobileNet-160",
                 _cfg("mobilenet_v1", 0.5, 160), "params", "1.32", convention="weights"),
    ]  # fmt: skip
    return rows


def _slim_v1_rows() -> list[PaperRow]:
    """[slim-V1] checkpoint table: MACs / params for 4 widths x 4 resolutions."""
    table = {
        1.0: (("569", "418", "291", "186"), "4.24"),
        0.75: (("317", "233", "162", "104"), "2.59"),
        0.5: (("150", "110", "77", "49"), "1.34"),
        0.25: (("41", "34", "21", "14"), "0.47"),
    }
    rows = []
    for width, (macs_by_res, params) in table.items():
        for resolution, macs in zip((224, 192, 160, 128), macs_by_res, strict=True):
            config = _cfg("mobilenet_v1", width, resolution, 1001)
            name = f"MobileNet_v1_{width:g}_{resolution}"
            rows += [
                PaperRow(f"slim-V1-{width:g}-{resolution}-macs", "slim-V1", "checkpoint table",
                         name, config, "macs", macs, erratum=_slim_v1_erratum(width, resolution)),
                PaperRow(f"slim-V1-{width:g}-{resolution}-params", "slim-V1",
                         "checkpoint table", name, config, "params", params,
                         convention="slim_v1"),
            ]  # fmt: skip
    return rows


def _slim_v1_erratum(width: float, resolution: int) -> Erratum | None:
    """The slim-V1 MAC entries that disagree with [V1] and with eq. (7)'s rho^2 scaling."""
    rho2 = (resolution / 224) ** 2
    if width == 0.75 and resolution == 224:
        return Erratum(
            "[V1] Table 6 gives 325 M for 0.75 MobileNet-224: the sources differ",
            "[V1] Table 6 against the [slim-V1] checkpoint table (same network, two numbers)",
            corrected="325",
        )
    if width == 0.75:
        return Erratum(
            f"the whole 0.75 row is 317 x (res/224)^2; with [V1]'s 325 M, eq. (7) gives "
            f"325 x {rho2:.4f} = {325 * rho2:.1f} M",
            _FOUND_HERE,
            corrected=f"{325 * rho2:.0f}",
        )
    if width == 0.5 and resolution == 224:
        return Erratum(
            "[V1] Table 6 prints 149 M; the count, 149.50 M, sits on the rounding boundary",
            "[V1] Table 6 against the [slim-V1] checkpoint table (same network, two numbers)",
            corrected="149",
        )
    if width == 0.25 and resolution == 192:
        return Erratum(
            f"breaks the row's own eq. (7) scaling: 41 x {rho2:.4f} = {41 * rho2:.1f} M "
            "(the other entries 41 / 21 / 14 follow it)",
            _FOUND_HERE,
            corrected=f"{41 * rho2:.0f}",
        )
    return None


def _v2_rows() -> list[PaperRow]:
    table2 = _cfg("v2_table2")
    slim_1001 = _cfg("mobilenet_v2", classes=1001)
    slim_14 = _cfg("mobilenet_v2", 1.4, classes=1001)
    return [
        PaperRow("V2-T2-macs", "V2", "Table 2 (+ §4)",
                 "network built line by line from Table 2: '300M multiply-adds'", table2,
                 "macs", "300"),
        PaperRow("V2-T2-params", "V2", "Table 2 (+ §4)",
                 "network built from Table 2, slim rules (1001 classes): '3.4M parameters'",
                 _cfg("v2_table2", classes=1001), "params", "3.4", convention="slim"),
        PaperRow("V2-blocks", "V2", "§4 text", "'19 residual bottleneck layers' (depthwise convs)",
                 V2, "depthwise_layers", "19", "",
                 erratum=Erratum("Table 2's n column sums to 17 bottleneck blocks",
                                 "[V2] Table 2 (arXiv 1801.04381): its n column",
                                 corrected="17")),
        PaperRow("V2-T4-macs", "V2", "Table 4", "MobileNetV2", V2, "macs", "300"),
        PaperRow("V2-T4-params", "V2", "Table 4", "MobileNetV2 (slim rules, 1001 classes)",
                 slim_1001, "params", "3.4", convention="slim"),
        PaperRow("V2-T4-1.4-macs", "V2", "Table 4", "MobileNetV2 (1.4)", slim_14, "macs", "585",
                 erratum=Erratum("the released 1.4 checkpoint has 582 M ([slim-V2])",
                                 "[V2] against the [slim-V2] checkpoint table for 1.4x", corrected="582")),
        PaperRow("V2-T4-1.4-params", "V2", "Table 4", "MobileNetV2 (1.4) (slim rules)", slim_14,
                 "params", "6.9", convention="slim",
                 erratum=Erratum("the released 1.4 checkpoint has 6.06 M ([slim-V2])",
                                 "[V2] against the [slim-V2] checkpoint table for 1.4x", corrected="6.06")),
        PaperRow("V2-T4-v1-macs", "V2", "Table 4", "MobileNetV1", V1, "macs", "575",
                 erratum=Erratum("[V1] and [slim-V1] give 569 M for the same network",
                                 "[V1] Table 6 against the [slim-V1] checkpoint table (same network, two numbers)",
                                 corrected="569")),
    ]  # fmt: skip


def _v3_rows() -> list[PaperRow]:
    """[V3] Table 3 (ImageNet, 224 px) and the TF release's checkpoint table.

    The paper's networks are TensorFlow's: at 0.75 the widths follow TF's rule (expansions scaled
    from each block's input, the head kept at 1280 / 1024), which ``keras_style=True`` builds; at
    1.0 it is torchvision's network too. Its MAdds count the SE gates' channel-scale multiplies
    (``macs_se_scale``): plain conv + FC mult-adds give 43.4 M for Small 0.75 (printed 44), and
    counting the h-swish as well would overshoot Large 0.75 (156.3 M, printed 155)."""
    rows = []
    for arch, width, macs, params, unconfirmed in (
        ("large", 1.0, "219", "5.4", False), ("large", 0.75, "155", "4.0", False),
        ("small", 1.0, "56", "2.5", False), ("small", 0.75, "44", "2.0", True),
    ):  # fmt: skip
        config = _cfg(f"mobilenet_v3_{arch}", width, keras_style=True)
        name, key = f"MobileNetV3-{arch.title()} {width}", f"V3-T3-{arch}-{width:g}"
        erratum = None
        if (arch, width) == ("large", 1.0):
            erratum = Erratum(
                "the TF release prints 217 M for this network; no counting of the h-swish or SE "
                "operations gives 219 M together with the table's other rows (h-swish added: "
                "218.7 M here, but 156.3 M for Large 0.75, printed 155)",
                "[V3] Table 3 against the [slim-V3] checkpoint table (same network, two numbers)",
                corrected="217",
            )
        rows += [
            PaperRow(f"{key}-macs", "V3", "Table 3", name, config, "macs_se_scale", macs,
                     erratum=erratum, unconfirmed=unconfirmed),
            PaperRow(f"{key}-params", "V3", "Table 3", name, config, "params", params,
                     convention="trainable", unconfirmed=unconfirmed),
        ]  # fmt: skip
    for width, macs, params in ((1.0, "217", "5.4"), (0.75, "155", "4.0")):
        config = _cfg("mobilenet_v3_large", width, classes=1001, keras_style=True)
        name = f"v3-large_224_{width:g}_float"
        rows += [
            PaperRow(f"slim-V3-large-{width:g}-macs", "slim-V3", "checkpoint table", name,
                     config, "macs", macs),
            PaperRow(f"slim-V3-large-{width:g}-params", "slim-V3", "checkpoint table", name,
                     config, "params", params, convention="slim"),
        ]  # fmt: skip
    return rows


def _slim_v2_rows() -> list[PaperRow]:
    """[slim-V2] "Mobilenet V2 Imagenet Checkpoints", all 22 rows."""
    table = (
        (1.4, 224, "582", "6.06"), (1.3, 224, "509", "5.34"),
        (1.0, 224, "300", "3.47"), (1.0, 192, "221", "3.47"), (1.0, 160, "154", "3.47"),
        (1.0, 128, "99", "3.47"), (1.0, 96, "56", "3.47"),
        (0.75, 224, "209", "2.61"), (0.75, 192, "153", "2.61"), (0.75, 160, "107", "2.61"),
        (0.75, 128, "69", "2.61"), (0.75, 96, "39", "2.61"),
        (0.5, 224, "97", "1.95"), (0.5, 192, "71", "1.95"), (0.5, 160, "50", "1.95"),
        (0.5, 128, "32", "1.95"), (0.5, 96, "18", "1.95"),
        (0.35, 224, "59", "1.66"), (0.35, 192, "43", "1.66"), (0.35, 160, "30", "1.66"),
        (0.35, 128, "20", "1.66"), (0.35, 96, "11", "1.66"),
    )  # fmt: skip
    rows = []
    for width, resolution, macs, params in table:
        config = _cfg("mobilenet_v2", width, resolution, 1001)
        name = f"mobilenet_v2_{width:g}_{resolution}"
        rows += [
            PaperRow(f"slim-V2-{width:g}-{resolution}-macs", "slim-V2", "checkpoint table", name,
                     config, "macs", macs),
            PaperRow(f"slim-V2-{width:g}-{resolution}-params", "slim-V2", "checkpoint table",
                     name, config, "params", params, convention="slim"),
        ]  # fmt: skip
    return rows


def _framework_rows() -> list[PaperRow]:
    """Keras, torchvision and timm counts."""
    rows = []
    for source, name, config, published, convention in (
        ("keras-table-old", "Keras MobileNet", V1, "4,253,864", "keras"),
        ("keras-table-new", "Keras MobileNet", V1, "4.3", "keras"),
        ("keras-table-old", "Keras MobileNetV2", V2, "3,538,984", "keras"),
        ("keras-table-new", "Keras MobileNetV2", V2, "3.5", "keras"),
        ("keras-table-old", "Keras Xception", _cfg("xception", resolution=299), "22,910,480",
         "keras"),
        ("keras-table-old", "Xception trainable (Keras, osmr, timm legacy_xception)",
         _cfg("xception", resolution=299), "22,855,952", "trainable"),
        ("keras-table-new", "Keras Xception", _cfg("xception", resolution=299), "22.9", "keras"),
        ("keras-table-old", "Keras VGG16", _cfg("vgg16"), "138,357,544", "keras"),
        ("keras-table-new", "Keras VGG16", _cfg("vgg16"), "138.4", "keras"),
        ("tv", "torchvision mobilenet_v2 num_params", V2, "3,504,872", "trainable"),
        ("tv", "torchvision mobilenet_v3_large num_params", _cfg("mobilenet_v3_large"),
         "5,483,032", "trainable"),
        ("tv", "torchvision mobilenet_v3_small num_params", _cfg("mobilenet_v3_small"),
         "2,542,856", "trainable"),
        ("timm-res", "mobilenetv1_100", V1, "4.23", "trainable"),
        ("timm-res", "mobilenetv2_100", V2, "3.50", "trainable"),
        ("timm-res", "mobilenetv2_140", _cfg("mobilenet_v2", 1.4), "6.11", "trainable"),
        ("timm-res", "ghostnet_100", _cfg("ghostnet_100"), "5.18", "trainable"),
        ("timm-card", "ghostnet_100", _cfg("ghostnet_100"), "5.2", "trainable"),
        ("timm-res", "ghostnetv2_100", _cfg("ghostnetv2_100"), "6.16", "trainable"),
        ("timm-card", "ghostnetv2_100", _cfg("ghostnetv2_100"), "6.2", "trainable"),
        ("timm-res", "ghostnetv2_130", _cfg("ghostnetv2_100", 1.3), "8.96", "trainable"),
        ("timm-card", "ghostnetv2_130", _cfg("ghostnetv2_100", 1.3), "9.0", "trainable"),
        ("timm-res", "ghostnetv2_160", _cfg("ghostnetv2_100", 1.6), "12.39", "trainable"),
        ("timm-card", "ghostnetv2_160", _cfg("ghostnetv2_100", 1.6), "12.4", "trainable"),
        ("timm-res", "ghostnetv3_100 (training form, unfused)", _cfg("ghostnetv3_100"), "8.13",
         "trainable"),
        ("timm-res", "vgg16.tv_in1k", _cfg("vgg16"), "138.36", "trainable"),
    ):  # fmt: skip
        exact = "," in published  # an exact count ("3,504,872") or millions ("3.5")
        rows.append(
            PaperRow(
                f"{source}:{name}:{published}",
                source,
                "params",
                name,
                config,
                "params",
                published,
                "" if exact else "M",
                convention,
            )  # fmt: skip
        )
    rows += [
        PaperRow("tv-mobilenet_v2-gmacs", "tv", "GFLOPS (_ops 0.301)",
                 "torchvision mobilenet_v2 (its 'GFLOPS' are GMACs)", V2, "macs", "0.301", "G"),
        PaperRow("tv-mobilenet_v3_large-gmacs", "tv", "GFLOPS (_ops 0.217)",
                 "torchvision mobilenet_v3_large", _cfg("mobilenet_v3_large"), "macs", "0.217",
                 "G"),
        PaperRow("tv-mobilenet_v3_small-gmacs", "tv", "GFLOPS (_ops 0.057)",
                 "torchvision mobilenet_v3_small", _cfg("mobilenet_v3_small"), "macs", "0.057",
                 "G"),
        PaperRow("tf-keras-doc-mobilenet-macs", "tf-keras-doc", "docstring",
                 "MobileNet 1.0-224 (the docstring prints 529 for every resolution)", V1, "macs",
                 "529",
                 erratum=Erratum("a docstring error: [V1] and [slim-V1] give 569 M",
                                 "[V1] Table 6 against the [slim-V1] checkpoint table (same network, two numbers)",
                                 corrected="569")),
    ]  # fmt: skip
    for name, width, gmacs in (
        ("ghostnet_100", 1.0, "0.1"), ("ghostnetv2_100", 1.0, "0.2"),
        ("ghostnetv2_100", 1.3, "0.3"), ("ghostnetv2_100", 1.6, "0.4"),
    ):  # fmt: skip
        rows.append(
            PaperRow(
                f"timm-card-{name}-{width:g}-gmacs",
                "timm-card",
                "GMACs",
                f"{name} {width:g}x",
                _cfg(name, width),
                "macs",
                gmacs,
                "G",
            )  # fmt: skip
        )
    return rows


def _ghostnet_rows() -> list[PaperRow]:
    """GhostNet V1 / V2 / V3."""
    gn = _cfg("ghostnet_100")
    v3_fused = _cfg("ghostnetv3_100", reparameterize=True)
    return [
        PaperRow("GN-T8-0.5-params", "GN", "Table 8", "GhostNet 0.5x", _cfg("ghostnet_100", 0.5),
                 "params", "2.6", convention="trainable", unconfirmed=True),
        PaperRow("GN-T8-0.5-macs", "GN", "Table 8", "GhostNet 0.5x", _cfg("ghostnet_100", 0.5),
                 "macs", "42", unconfirmed=True),
        PaperRow("GN-T8-1.0-params", "GN", "Table 8", "GhostNet 1.0x", gn, "params", "5.2",
                 convention="trainable", unconfirmed=True),
        PaperRow("GN-T8-1.0-macs", "GN", "Table 8", "GhostNet 1.0x (SE convs included)", gn,
                 "macs", "141", unconfirmed=True),
        PaperRow("GN-T8-1.3-params", "GN", "Table 8", "GhostNet 1.3x", _cfg("ghostnet_100", 1.3),
                 "params", "7.3", convention="trainable", unconfirmed=True),
        PaperRow("GN-T8-1.3-macs", "GN", "Table 8", "GhostNet 1.3x", _cfg("ghostnet_100", 1.3),
                 "macs", "226", unconfirmed=True,
                 erratum=Erratum("secondary-source value; a count of the official code's "
                                 "layer shapes gives 227.0 M", "[COUNT] of [GN-code] ghostnet.py",
                                 corrected="227.0")),
        PaperRow("GN-code-readme-macs", "GN-code", "readme", "GhostNet 1.0x: '142M Flops'", gn,
                 "macs", "142",
                 erratum=Erratum("the paper (Table 8) and the TF release say 141 M",
                                 "[GN] Table 8 and the TF release (141 M) against the [GN-code] readme (142 M)",
                                 corrected="141")),
        PaperRow("GNv2-abstract-macs", "GNv2", "abstract", "GhostNetV2 1.0x (DFC at half "
                 "resolution, SE included)", _cfg("ghostnetv2_100"), "macs", "167"),
        PaperRow("GNv2-paper-params", "GNv2", "results table", "GhostNetV2 1.0x",
                 _cfg("ghostnetv2_100"), "params", "6.1", convention="trainable",
                 unconfirmed=True),
        PaperRow("GNv3-abstract-1.3-macs", "GNv3", "abstract", "GhostNetV3 1.3x, inference form",
                 _cfg("ghostnetv3_100", 1.3, reparameterize=True), "macs", "269"),
        PaperRow("iFormer-GNv3-1.0-params", "iFormer", "comparison table",
                 "GhostNetV3 1.0x, inference form", v3_fused, "params", "6.1",
                 convention="trainable"),
        PaperRow("iFormer-GNv3-1.0-macs", "iFormer", "comparison table",
                 "GhostNetV3 1.0x, inference form", v3_fused, "macs", "0.17", "G"),
        PaperRow("iFormer-GNv3-1.3-params", "iFormer", "comparison table",
                 "GhostNetV3 1.3x, inference form", _cfg("ghostnetv3_100", 1.3,
                                                         reparameterize=True),
                 "params", "8.9", convention="trainable"),
        PaperRow("COUNT-GNv3-unfused-macs", "COUNT", "§7", "GhostNetV3 1.0x training form "
                 "(every re-param branch a conv)", _cfg("ghostnetv3_100"), "macs", "404.1"),
    ]  # fmt: skip


def _seed_rows() -> list[PaperRow]:
    """The cost formulas of the seeds: each a closed form AND two small layer stacks counted."""
    sep = dict(M=64, N=64, K=3)
    return [
        PaperRow("seed-separable-ratio", "seed", "V1 §3.1: 1/N + 1/K^2",
                 "depthwise-separable / standard conv cost, N=64, K=3",
                 _cfg("separable_conv", 1.0, 56, **sep), "macs_ratio", "0.126", "",
                 reference=_cfg("standard_conv", 1.0, 56, **sep), formula="separable"),
        PaperRow("seed-5x5-vs-3x3", "seed", "1 - 2*9/25",
                 "two stacked 3x3 convs vs one 5x5 (same channels): saving",
                 _cfg("conv_stack", 1.0, 28, C=64, kernels=((3, 3), (3, 3))), "macs_saving_pct",
                 "28", "%", reference=_cfg("conv_stack", 1.0, 28, C=64, kernels=((5, 5),)),
                 formula="kernel_area"),
        PaperRow("seed-3x3-vs-1x3-3x1", "seed", "1 - (3+3)/9",
                 "1x3 then 3x1 conv vs one 3x3 (same channels): saving",
                 _cfg("conv_stack", 1.0, 28, C=64, kernels=((1, 3), (3, 1))), "macs_saving_pct",
                 "33", "%", reference=_cfg("conv_stack", 1.0, 28, C=64, kernels=((3, 3),)),
                 formula="kernel_area"),
    ]  # fmt: skip


#: every published number, in the order ``verify`` prints them
ROWS: tuple[PaperRow, ...] = tuple(
    _v1_rows() + _slim_v1_rows() + _v2_rows() + _slim_v2_rows() + _v3_rows() + _framework_rows()
    + _ghostnet_rows() + _seed_rows()
)  # fmt: skip


# ------------------------------------------------------------------------ the seeds' table


@dataclass(frozen=True)
class SeedEntry:
    """One line of the seeds' table: a configuration the project's seed compares, and the keys in
    ``ROWS`` of the numbers the sources publish for exactly that configuration.

    ``config``: the model, width multiplier alpha and input resolution in pixels (1000 classes);
    ``rho``: the resolution multiplier as the seed writes it (of 224: "0.85" is 192 px; Xception's
    own input is 299). ``params`` / ``macs``: the key of the published row, or None where no source
    has a number for this configuration: ``verify`` then shows our count of ``config`` ("computed",
    parameters under the ``trainable`` convention), which verifies nothing.
    """

    key: str
    model: str
    rho: str
    config: ModelConfig
    params: str | None
    macs: str | None


#: the seeds' table: MobileNetV1 alpha/rho 1/1, 0.75/0.85, 0.25/0.57; MobileNetV2 1.4, 1.0,
#: 0.35/0.43; Xception; VGG16 (issue 5). Each published number is a row of ``ROWS``, cited by key.
SEEDS_TABLE = (
    SeedEntry("seed-table-v1-1.0-224", "MobileNetV1", "1", V1,
              "V1-T6-1.0-params", "V1-T6-1.0-macs"),
    SeedEntry("seed-table-v1-0.75-192", "MobileNetV1", "0.85", _cfg("mobilenet_v1", 0.75, 192),
              "slim-V1-0.75-192-params", "slim-V1-0.75-192-macs"),
    SeedEntry("seed-table-v1-0.25-128", "MobileNetV1", "0.57", _cfg("mobilenet_v1", 0.25, 128),
              "slim-V1-0.25-128-params", "slim-V1-0.25-128-macs"),
    SeedEntry("seed-table-v2-1.4-224", "MobileNetV2", "1", _cfg("mobilenet_v2", 1.4),
              "slim-V2-1.4-224-params", "slim-V2-1.4-224-macs"),
    SeedEntry("seed-table-v2-1.0-224", "MobileNetV2", "1", V2,
              "slim-V2-1-224-params", "slim-V2-1-224-macs"),
    SeedEntry("seed-table-v2-0.35-96", "MobileNetV2", "0.43", _cfg("mobilenet_v2", 0.35, 96),
              "slim-V2-0.35-96-params", "slim-V2-0.35-96-macs"),
    SeedEntry("seed-table-xception", "Xception", "1", _cfg("xception", resolution=299),
              "keras-table-old:Keras Xception:22,910,480", None),
    SeedEntry("seed-table-vgg16", "VGG16", "1", _cfg("vgg16"),
              "keras-table-old:Keras VGG16:138,357,544", "V1-T8-vgg16-macs"),
)  # fmt: skip
