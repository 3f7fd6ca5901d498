"""Image transforms: resize, crops, flips and colour changes on ``uint8`` HWC pixels, then float CHW.

A transform is called as ``t(img, rng)``: ``img`` is an ``(H, W, 3)`` ``uint8`` RGB array (a
``Normalize`` turns it into a ``(3, H, W)`` ``float32`` array, after which only ``RandomErasing``
applies) and ``rng`` is a ``numpy.random.Generator``. Random transforms draw only from that
generator, so the same generator state gives the same pixels: runs are reproducible, and a resumed
run sees the augmentations it would have seen. Deterministic transforms ignore ``rng``.

Pixel operations use Pillow (bilinear resampling, antialiased when shrinking, as torchvision's PIL
backend does). Random parameters follow torchvision's definitions, cited per class.

ImageNet statistics are the normalisation default -- ``mean = (0.485, 0.456, 0.406)``,
``std = (0.229, 0.224, 0.225)`` (RGB, on pixels scaled to [0, 1]) -- as in torchvision and timm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: eval resize = image_size / CROP_FRACTION, then a centre crop of image_size (224 <- 256)
CROP_FRACTION = 0.875

_BILINEAR = Image.Resampling.BILINEAR


def resize_size(image_size: int) -> int:
    """Shorter side before the centre crop: ``round(image_size / 0.875)`` (256 for 224, 146 for 128).

    Also the size a dataset caches decoded images at: a little larger than the crop, so random
    crops still have room to move.
    """
    return int(round(image_size / CROP_FRACTION))


def resize_shorter_pil(
    img: Image.Image, size: int, resample: Image.Resampling = _BILINEAR
) -> Image.Image:
    """Scale so the shorter side is ``size``; the longer is ``int(size * long / short)`` (torchvision)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    return img.resize((new_w, new_h), resample)


def _check_image(img: np.ndarray) -> None:
    if not (
        isinstance(img, np.ndarray)
        and img.dtype == np.uint8
        and img.ndim == 3
        and img.shape[2] == 3
    ):
        got = f"{type(img).__name__} {getattr(img, 'dtype', '')} {getattr(img, 'shape', '')}"
        raise TypeError(f"expected an (H, W, 3) uint8 RGB array, got {got}")


def _pil(img: np.ndarray) -> Image.Image:
    _check_image(img)
    return Image.fromarray(img, "RGB")


class Compose:
    """Apply ``transforms`` in order, passing the same generator to each."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, img, rng: np.random.Generator | None = None):
        for t in self.transforms:
            img = t(img, rng)
        return img

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"Compose([\n  {inner}\n])"


#: Pillow resampling filters by the names torchvision and timm configs use
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def _resampling(interpolation: str) -> Image.Resampling:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}"
        )
    return INTERPOLATIONS[interpolation]


class Resize:
    """Shorter side to ``size``, aspect ratio kept (``torchvision.transforms.Resize(int)``);
    ``interpolation`` "bilinear" (default), "bicubic" or "nearest"."""

    def __init__(self, size: int, interpolation: str = "bilinear"):
        self.size = int(size)
        self.interpolation = interpolation
        self._filter = _resampling(interpolation)

    def __call__(self, img: np.ndarray, rng=None) -> np.ndarray:
        return np.asarray(resize_shorter_pil(_pil(img), self.size, self._filter))

    def __repr__(self) -> str:
        return f"Resize({self.size}, interpolation={self.interpolation!r})"


class CenterSquareCrop:
    """The largest centred square, ``min(H, W)`` on a side, top-left corner
    ``((H - s) // 2, (W - s) // 2)`` (what TensorFlow Lite's MobileNet examples feed)."""

    def __call__(self, img: np.ndarray, rng=None) -> np.ndarray:
        _check_image(img)
        h, w = img.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        return img[top : top + s, left : left + s]

    def __repr__(self) -> str:
        return "CenterSquareCrop()"


class ResizeTo:
    """Both sides to ``size`` (``PIL.Image.resize((size, size))``), aspect ratio not kept."""

    def __init__(self, size: int, interpolation: str = "bilinear"):
        self.size = int(size)
        self.interpolation = interpolation
        self._filter = _resampling(interpolation)

    def __call__(self, img: np.ndarray, rng=None) -> np.ndarray:
        return np.asarray(_pil(img).resize((self.size, self.size), self._filter))

    def __repr__(self) -> str:
        return f"ResizeTo({self.size}, interpolation={self.interpolation!r})"


class PixelsCHW:
    """``uint8 (H, W, 3)`` -> ``uint8 (3, H, W)``: the raw pixels, unscaled, channels first (the
    input of a uint8 model, whose input quantization does the scaling)."""

    def __call__(self, img: np.ndarray, rng=None) -> np.ndarray:
        _check_image(img)
        return np.ascontiguousarray(img.transpose(2, 0, 1))

    def __repr__(self) -> str:
        return "PixelsCHW()"


class CenterCrop:
    """The central ``size x size`` window (``torchvision.transforms.CenterCrop``).

    Top-left corner ``(round((H - size) / 2), round((W - size) / 2))``; an image smaller than
    ``size`` is zero-padded around first, as torchvision does.
    """

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, img: np.ndarray, rng=None) -> np.ndarray:
        _check_image(img)
        s = self.size
        h, w = img.shape[:2]
        if h < s or w < s:
            pad_h, pad_w = max(s - h, 0), max(s - w, 0)
            pads = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
            img = np.pad(img, pads)
            h, w = img.shape[:2]
        top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        return img[top : top + s, left : left + s]

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


class RandomResizedCrop:
    """A random window of area fraction in ``scale`` and aspect ratio in ``ratio``, resized to
    ``size x size`` (``torchvision.transforms.RandomResizedCrop``).

    Up to 10 tries: ``area = U(scale) * H * W``, ``aspect = exp(U(log ratio))``,
    ``w = round(sqrt(area * aspect))``, ``h = round(sqrt(area / aspect))``; the first window that fits
    is placed uniformly. If none fits, the whole image is cropped centrally to the nearest allowed
    aspect ratio.
    """

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
        if not (0.0 < scale[0] <= scale[1] <= 1.0) or not (0.0 < ratio[0] <= ratio[1]):
            raise ValueError(
                f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], got {scale}, {ratio}"
            )
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def get_params(
        self, height: int, width: int, rng: np.random.Generator
    ) -> tuple[int, int, int, int]:
        """``(top, left, crop_h, crop_w)`` of the window for an image of ``height x width``."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w
        in_ratio = width / height  # fallback: central crop at the closest allowed aspect ratio
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pil = _pil(img)
        top, left, h, w = self.get_params(img.shape[0], img.shape[1], rng)
        # crop and resize in one resampling pass: box = (left, upper, right, lower) in the source
        return np.asarray(
            pil.resize((self.size, self.size), _BILINEAR, box=(left, top, left + w, top + h))
        )

    def __repr__(self) -> str:
        return f"RandomResizedCrop({self.size}, scale={self.scale}, ratio={self.ratio})"


class RandomHorizontalFlip:
    """Mirror left-right (``img[:, ::-1]``) with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_image(img)
        return img[:, ::-1] if rng.random() < self.p else img

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomRotation:
    """Rotate by ``U(-degrees, degrees)`` degrees counter-clockwise about the centre, same size,
    corners filled with black (``torchvision.transforms.RandomRotation(degrees)``, bilinear)."""

    def __init__(self, degrees: float = 10.0):
        self.degrees = float(degrees)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        angle = rng.uniform(-self.degrees, self.degrees)
        return np.asarray(_pil(img).rotate(angle, resample=_BILINEAR, fillcolor=(0, 0, 0)))

    def __repr__(self) -> str:
        return f"RandomRotation({self.degrees})"


#: Pillow enhancers: factor 1 is the identity, 0 gives black / flat grey / grayscale
_ENHANCERS = {
    "brightness": ImageEnhance.Brightness,
    "contrast": ImageEnhance.Contrast,
    "saturation": ImageEnhance.Color,
}


class ColorJitter:
    """Brightness, contrast and saturation factors ``U(max(0, 1 - s), 1 + s)``, applied in a random
    order (``torchvision.transforms.ColorJitter`` without hue; Pillow's ``ImageEnhance`` blends)."""

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4):
        self.strengths = {
            "brightness": float(brightness),
            "contrast": float(contrast),
            "saturation": float(saturation),
        }

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pil = _pil(img)
        names = list(self.strengths)
        for k in rng.permutation(len(names)):
            s = self.strengths[names[k]]
            factor = rng.uniform(max(0.0, 1.0 - s), 1.0 + s)
            if s > 0:
                pil = _ENHANCERS[names[k]](pil).enhance(factor)
        return np.asarray(pil)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.strengths.items())
        return f"ColorJitter({args})"


def _affine(pil: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    """Pillow affine warp; ``matrix`` maps OUTPUT (x, y) to input ``(a x + b y + c, d x + e y + f)``."""
    return pil.transform(
        pil.size, Image.Transform.AFFINE, matrix, resample=_BILINEAR, fillcolor=(0, 0, 0)
    )


# RandAugment operations: f(pil, level, sign) with level in [0, 1] (magnitude / (bins - 1)) and
# sign +-1. Maxima are torchvision's RandAugment ranges (timm's are the same but translate 0.45).
_RANDAUGMENT_OPS: dict[str, Callable[[Image.Image, float, int], Image.Image]] = {
    "identity": lambda pil, level, sign: pil,
    "autocontrast": lambda pil, level, sign: ImageOps.autocontrast(pil),
    "equalize": lambda pil, level, sign: ImageOps.equalize(pil),
    "rotate": lambda pil, level, sign: pil.rotate(
        sign * 30.0 * level, resample=_BILINEAR, fillcolor=(0, 0, 0)
    ),
    "solarize": lambda pil, level, sign: ImageOps.solarize(pil, int(round(255 * (1.0 - level)))),
    "color": lambda pil, level, sign: ImageEnhance.Color(pil).enhance(1.0 + sign * 0.9 * level),
    "posterize": lambda pil, level, sign: ImageOps.posterize(pil, 8 - int(round(4 * level))),
    "contrast": lambda pil, level, sign: ImageEnhance.Contrast(pil).enhance(
        1.0 + sign * 0.9 * level
    ),
    "brightness": lambda pil, level, sign: ImageEnhance.Brightness(pil).enhance(
        1.0 + sign * 0.9 * level
    ),
    "sharpness": lambda pil, level, sign: ImageEnhance.Sharpness(pil).enhance(
        1.0 + sign * 0.9 * level
    ),
    # shear about the top-left corner by up to 0.3; translate by up to 150/331 of the side
    "shear_x": lambda pil, level, sign: _affine(pil, (1, sign * 0.3 * level, 0, 0, 1, 0)),
    "shear_y": lambda pil, level, sign: _affine(pil, (1, 0, 0, sign * 0.3 * level, 1, 0)),
    "translate_x": lambda pil, level, sign: _affine(
        pil, (1, 0, sign * level * 150 / 331 * pil.size[0], 0, 1, 0)
    ),
    "translate_y": lambda pil, level, sign: _affine(
        pil, (1, 0, 0, 0, 1, sign * level * 150 / 331 * pil.size[1])
    ),
}
RANDAUGMENT_OPS = tuple(_RANDAUGMENT_OPS)


class RandAugment:
    """``num_ops`` operations drawn uniformly (with replacement) from :data:`RANDAUGMENT_OPS`,
    each at strength ``magnitude / (num_magnitude_bins - 1)`` of its maximum and a random sign
    (``torchvision.transforms.RandAugment``; Cubuk et al. 2020).

    ``num_magnitude_bins=31`` is torchvision's scale (magnitude 9 -> 30 %); ``num_magnitude_bins=11``
    is timm's ``rand-m9`` scale (magnitude 9 -> 90 %), the GhostNetV3 recipe's policy
    (without its ``mstd`` magnitude noise).
    """

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: int = 9,
        num_magnitude_bins: int = 31,
        ops=RANDAUGMENT_OPS,
    ):
        unknown = sorted(set(ops) - set(_RANDAUGMENT_OPS))
        if unknown:
            raise ValueError(f"unknown RandAugment ops {unknown}; choose from {RANDAUGMENT_OPS}")
        if not 0 <= magnitude < num_magnitude_bins:
            raise ValueError(f"magnitude {magnitude} must be in [0, {num_magnitude_bins - 1}]")
        self.num_ops, self.magnitude, self.num_magnitude_bins = (
            int(num_ops),
            int(magnitude),
            int(num_magnitude_bins),
        )
        self.ops = tuple(ops)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pil = _pil(img)
        level = self.magnitude / (self.num_magnitude_bins - 1)
        for _ in range(self.num_ops):
            name = self.ops[int(rng.integers(len(self.ops)))]
            sign = -1 if rng.random() < 0.5 else 1
            pil = _RANDAUGMENT_OPS[name](pil, level, sign)
        return np.asarray(pil)

    def __repr__(self) -> str:
        return f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, num_magnitude_bins={self.num_magnitude_bins})"


class Normalize:
    """``uint8 (H, W, 3)`` -> ``float32 (3, H, W)``: ``(x / 255 - mean[c]) / std[c]``.

    ``torchvision``'s ``ToTensor()`` followed by ``Normalize(mean, std)``, in one step, computed as
    ``x * scale[c] - shift[c]`` with ``scale = 1 / (255 std)``, ``shift = mean / std`` (one multiply
    and one subtract over the image: several times faster than four passes; equal to ~1 float32 ulp).
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = np.asarray(mean, dtype=np.float64).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float64).reshape(3, 1, 1)
        if np.any(self.std <= 0):
            raise ValueError(f"std must be positive, got {std}")
        self._scale = (1.0 / (255.0 * self.std)).astype(np.float32)  # (3, 1, 1)
        self._shift = (self.mean / self.std).astype(np.float32)  # (3, 1, 1)

    def __call__(self, img: np.ndarray, rng=None) -> np.ndarray:
        _check_image(img)
        out = np.empty((3, *img.shape[:2]), dtype=np.float32)  # (3, H, W)
        np.multiply(img.transpose(2, 0, 1), self._scale, out=out)
        out -= self._shift
        return out

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.ravel().tolist()}, std={self.std.ravel().tolist()})"


class RandomErasing:
    """With probability ``p``, overwrite one random rectangle of a float ``(C, H, W)`` image
    (``torchvision.transforms.RandomErasing``, same defaults; Zhong et al. 2020).

    Up to 10 tries: ``area = U(scale) * H * W``, ``aspect = exp(U(log ratio))``,
    ``h = round(sqrt(area * aspect))``, ``w = round(sqrt(area / aspect))``, accepted if ``h < H`` and
    ``w < W``. The rectangle gets ``value`` (0: the dataset mean after Normalize) or, with
    ``value="random"``, standard-normal noise per pixel.
    """

    def __init__(
        self, p: float = 0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value: float | str = 0.0
    ):
        if value != "random" and not isinstance(value, (int, float)):
            raise ValueError(f"value must be a number or 'random', got {value!r}")
        self.p, self.scale, self.ratio, self.value = float(p), tuple(scale), tuple(ratio), value

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.dtype.kind == "f"):
            raise TypeError(
                f"RandomErasing works on float (C, H, W) arrays (after Normalize), got {img.dtype} {img.shape}"
            )
        if rng.random() >= self.p:
            return img
        c, height, width = img.shape
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            area = height * width * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if h < height and w < width:
                top, left = (
                    int(rng.integers(0, height - h + 1)),
                    int(rng.integers(0, width - w + 1)),
                )
                out = img.copy()
                if self.value == "random":
                    out[:, top : top + h, left : left + w] = rng.standard_normal(
                        (c, h, w), dtype=np.float32
                    )
                else:
                    out[:, top : top + h, left : left + w] = self.value
                return out
        return img

    def __repr__(self) -> str:
        return f"RandomErasing(p={self.p}, scale={self.scale}, ratio={self.ratio}, value={self.value!r})"


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(N,)`` int labels -> ``(N, num_classes)`` float32 one-hot rows."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be a 1-D array of ints in [0, {num_classes}), got shape {labels.shape}"
        )
    return np.eye(num_classes, dtype=np.float32)[labels]


def mixup(
    x: np.ndarray, y: np.ndarray, num_classes: int, rng: np.random.Generator, alpha: float = 0.2
):
    """Mixup (Zhang et al. 2018): ``x' = lam x + (1 - lam) x[roll]``, same mix of one-hot targets.

    ``lam ~ Beta(alpha, alpha)``; each sample is paired with the previous one in the batch
    (``roll(1)``, as ``torchvision.transforms.v2.MixUp``). Returns ``(x', soft targets (N, K))``.
    """
    lam = np.float32(rng.beta(alpha, alpha))
    targets = one_hot(y, num_classes)
    return lam * x + (1 - lam) * np.roll(x, 1, axis=0), lam * targets + (1 - lam) * np.roll(
        targets, 1, axis=0
    )


def cutmix(
    x: np.ndarray, y: np.ndarray, num_classes: int, rng: np.random.Generator, alpha: float = 1.0
):
    """CutMix (Yun et al. 2019): paste one box from the ``roll(1)`` partner into every sample.

    ``lam ~ Beta(alpha, alpha)``; the box has sides ``sqrt(1 - lam)`` of the image, a uniform
    centre, and is clipped to the image; targets mix by the area actually kept,
    ``lam' = 1 - box_area / (H W)``. ``x`` is ``(N, C, H, W)``. Returns ``(x', soft targets)``.
    """
    lam = rng.beta(alpha, alpha)
    height, width = x.shape[2:]
    cy, cx = rng.integers(0, height), rng.integers(0, width)
    half_h, half_w = int(height * math.sqrt(1 - lam)) // 2, int(width * math.sqrt(1 - lam)) // 2
    top, bottom = max(cy - half_h, 0), min(cy + half_h, height)
    left, right = max(cx - half_w, 0), min(cx + half_w, width)
    out = x.copy()
    out[:, :, top:bottom, left:right] = np.roll(x, 1, axis=0)[:, :, top:bottom, left:right]
    kept = np.float32(1.0 - (bottom - top) * (right - left) / (height * width))
    targets = one_hot(y, num_classes)
    return out, kept * targets + (1 - kept) * np.roll(targets, 1, axis=0)


#: train_transforms policies, weakest to strongest
POLICIES = ("none", "basic", "standard", "randaugment")


def train_transforms(
    image_size: int,
    policy: str = "standard",
    scale: tuple[float, float] = (0.08, 1.0),
    erasing: float | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """Training augmentation presets; all end with :class:`Normalize` and give float32 (3, S, S).

    - ``"none"``: the evaluation pipeline (augmentation off, e.g. for parity tests).
    - ``"basic"``: RandomResizedCrop(``scale``) + horizontal flip.
    - ``"standard"``: basic + RandomRotation(10) + ColorJitter(0.2, 0.2, 0.2) + RandomErasing(0.25).
    - ``"randaugment"``: basic + RandAugment(2 ops, magnitude 9 of 31) + RandomErasing(0.25):
      the GhostNetV3 / timm recipe's kind of policy (Mixup/CutMix are left off, as that paper found
      them harmful for compact models; see :func:`mixup`, :func:`cutmix`).

    ``erasing`` overrides the RandomErasing probability (0 disables it).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown augmentation policy {policy!r}; choose from {POLICIES}")
    if policy == "none":
        return eval_transforms(image_size, mean, std)
    steps: list[Callable] = [RandomResizedCrop(image_size, scale=scale), RandomHorizontalFlip()]
    if policy == "standard":
        steps += [RandomRotation(10.0), ColorJitter(0.2, 0.2, 0.2)]
    elif policy == "randaugment":
        steps.append(RandAugment(num_ops=2, magnitude=9))
    steps.append(Normalize(mean, std))
    p_erase = erasing if erasing is not None else (0.0 if policy == "basic" else 0.25)
    if p_erase > 0:
        steps.append(RandomErasing(p=p_erase))
    return Compose(steps)


def eval_transforms(
    image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Compose:
    """Resize(shorter side ``resize_size(image_size)``) + CenterCrop(``image_size``) + Normalize."""
    return Compose([Resize(resize_size(image_size)), CenterCrop(image_size), Normalize(mean, std)])


def pretrained_transforms(cfg: dict) -> Compose:
    """The evaluation pipeline a published model was trained for, from its ``pretrained_cfg``
    (``scratchnets.models.load_pretrained``):

    - torchvision (``resize``): shorter side to ``resize`` (256), centre crop ``size`` (224);
    - timm (``crop_pct``): shorter side to ``floor(size / crop_pct)``, centre crop ``size``, with
      the config's interpolation (bicubic for most);
    - TFLite (``crop == "centre square"``): the largest centred square resized to ``size x size``;
    - Keras (``crop == "none"``): the whole image resized to ``size x size`` (its aspect ratio not
      kept), as ``keras.utils.load_img(target_size=...)`` does;

    then ``Normalize(mean, std)`` (``[-1, 1]`` is mean = std = 0.5), or for a uint8 model
    (``dtype == "uint8"``) ``PixelsCHW``: the raw pixels. A config that says none of these gets
    torchvision's ImageNet defaults for its ``size`` (224 if absent).
    """
    size = int(cfg.get("size", 224))
    interpolation = cfg.get("interpolation", "bilinear")
    if cfg.get("crop") == "centre square":
        steps = [CenterSquareCrop(), ResizeTo(size, interpolation)]
    elif cfg.get("crop") == "none":
        steps = [ResizeTo(size, interpolation)]
    else:
        if "crop_pct" in cfg:
            shorter = math.floor(size / float(cfg["crop_pct"]))
        else:
            shorter = int(cfg.get("resize", resize_size(size)))
        steps = [Resize(shorter, interpolation), CenterCrop(size)]
    if cfg.get("dtype") == "uint8":
        return Compose([*steps, PixelsCHW()])
    mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
    return Compose([*steps, Normalize(mean, std)])
