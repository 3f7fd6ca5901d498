"""Class names for the outputs of published ImageNet models.

ImageNet-1k models have 1000 outputs; Google's TF-slim / TFLite ones have 1001, output 0 being
"background". The names are looked for, in order,

1. in the file the user names (``labels=``, ``predict --labels FILE``): one name per line;
2. beside the weight file: ``labels.txt`` or ``imagenet_labels.txt`` (how Google's and Coral's
   TFLite models are distributed): a file's own labels win;
3. in the list shipped with scratchnets, ``imagenet_classes.txt``: ImageNet-1k's 1000 class
   names in class-index order, one a line, the short names torchvision uses ("pug", "tench";
   tests/test_predict_pretrained.py checks it against torchvision's list).

A 1000-name list serves a 1001-class model with "background" put first, and a 1001-name list
(first line "background") a 1000-class model with that line dropped. When no list is found, or
a list has another length, the classes are called "class 0", "class 1", ... and
``class_names`` says why in its second return value.
"""

from __future__ import annotations

from pathlib import Path

#: file names looked for beside a weight file
LABEL_FILES = ("labels.txt", "imagenet_labels.txt")
BACKGROUND = "background"


def read_labels(path: str | Path) -> list[str]:
    """One class name per non-empty line of the text file ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise FileNotFoundError(f"cannot read the labels file {path}: {exc.strerror}") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


#: ImageNet-1k's class names, shipped as package data
IMAGENET_CLASSES = Path(__file__).with_name("imagenet_classes.txt")


def imagenet_names() -> list[str]:
    """The 1000 ImageNet-1k class names, in class-index order."""
    return read_labels(IMAGENET_CLASSES)


def fit_to(names: list[str], num_classes: int) -> list[str] | None:
    """``names`` for a model with ``num_classes`` outputs: as they are, or with "background" put
    first or dropped between ImageNet's 1000 and TF's 1001 classes; None when they do not fit."""
    if len(names) == num_classes:
        return names
    with_background = names[0].lower() == BACKGROUND if names else False
    if (len(names), num_classes) == (1001, 1000) and with_background:
        return names[1:]
    if (len(names), num_classes) == (1000, 1001) and not with_background:
        return [BACKGROUND, *names]
    return None


def class_names(
    num_classes: int,
    weights: str | Path | None = None,
    labels: str | Path | None = None,
    recorded: list[str] | None = None,
) -> tuple[list[str], str]:
    """``(names, where they came from)`` for a model with ``num_classes`` outputs whose weights
    are the file ``weights``; ``labels`` names a labels file (a list of the wrong length for it
    is a ValueError); ``recorded``: names the weight file itself carries (an ONNX export's),
    used when no labels file is named or found beside it."""
    if labels is not None:
        listed = read_labels(labels)
        names = fit_to(listed, num_classes)
        if names is None:
            raise ValueError(
                f"the labels file {labels} has {len(listed)} names; the model has "
                f"{num_classes} classes"
            )
        return names, str(labels)
    candidates = []
    if weights is not None:
        for name in LABEL_FILES:
            path = Path(weights).parent / name
            if path.is_file():
                candidates.append((read_labels(path), str(path)))
    if recorded:
        candidates.append((list(recorded), "the weight file"))
    candidates.append((imagenet_names(), "ImageNet-1k class names"))
    for names, source in candidates:
        fitted = fit_to(names, num_classes)
        if fitted is not None:
            return fitted, source
    return [f"class {k}" for k in range(num_classes)], (
        f"no list of {num_classes} class names found (--labels FILE gives one)"
    )
