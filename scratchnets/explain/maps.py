"""Pictures for ``scratchnets explain MODEL --save-maps DIR`` (matplotlib): a layer's feature maps
and the first conv's filters as titled grids on one shared colour scale, and the receptive-field
size against depth with the layers named.

Each picture says what it shows in its title (the layer, its output shape, its receptive field,
whether the maps are taken before or after the activation), numbers its tiles (channel c, filter
f), and uses ONE colour scale for all its tiles, with the bar, so that tiles compare: per-tile
stretching would make a dead channel look as busy as a live one. Filters of random weights are
noise, and the picture says so.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np

#: at most this many channels / filters are drawn (the first ones)
LIMIT = 64


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) of a near-square grid for ``count`` tiles."""
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns


def shared_scale(values: np.ndarray) -> tuple[float, float, str]:
    """(vmin, vmax, colour map) of one scale for every tile: symmetric around 0 with a
    diverging map when the values have both signs (0 is white), else 0..max with a sequential
    one (after a ReLU)."""
    lo, hi = float(np.min(values)), float(np.max(values))
    if lo < 0 < hi:
        top = max(-lo, hi)
        return -top, top, "RdBu_r"
    if hi <= 0:
        return lo, 0.0, "viridis"
    return min(lo, 0.0), hi, "viridis"


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "the pictures of --save-maps need matplotlib: pip install 'scratchnets[plot]'"
        ) from None
    return plt


def _grid(count: int, title: str):
    plt = _pyplot()
    rows, columns = grid_shape(count)
    width = max(1.3 * columns + 1.6, 8.0)  # inches: wide enough for the title
    lines = [part for line in title.split("\n") for part in textwrap.wrap(line, int(width * 13))]
    height = 1.3 * rows + 0.9 + 0.2 * len(lines)
    fig, axes = plt.subplots(rows, columns, squeeze=False, figsize=(width, height))
    fig.subplots_adjust(top=1 - (0.18 * len(lines) + 0.35) / height, bottom=0.04, left=0.04)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle("\n".join(lines), fontsize=9)
    return fig, axes


def maps_figure(maps: np.ndarray, title: str):
    """The first ``LIMIT`` channels of one image's maps (C, H, W), channel c labelled, on one
    colour scale with its bar."""
    maps = np.asarray(maps[:LIMIT], np.float64)
    vmin, vmax, cmap = shared_scale(maps)
    fig, axes = _grid(len(maps), title)
    for k, (ax, plane) in enumerate(zip(axes.flat, maps, strict=False)):
        image = ax.imshow(plane, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(f"c{k}", fontsize=7, pad=2)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="value (one scale for all)")
    return fig


def filters_figure(w: np.ndarray, title: str, random_weights: bool):
    """A conv's first ``LIMIT`` filters (C_out, C_in, kh, kw): RGB tiles when C_in is 3 (a first
    conv: grey is 0, the brightest / darkest channel value +-max|w| over every filter), else the
    filters' first input channel on a diverging scale with its bar; filter f labelled."""
    w = np.asarray(w[:LIMIT], np.float64)
    top = float(np.max(np.abs(w))) or 1.0
    fig, axes = _grid(len(w), title + f"\none scale for all filters: 0 is grey, +-{top:.3g} the "
                      "extremes" + (" (RGB: the filter's weight on each input colour)"
                                    if w.shape[1] == 3 else ""))  # fmt: skip
    image = None
    for k, (ax, f) in enumerate(zip(axes.flat, w, strict=False)):
        if w.shape[1] == 3:
            ax.imshow(np.clip(0.5 + f.transpose(1, 2, 0) / (2 * top), 0, 1),
                      interpolation="nearest")  # fmt: skip
        else:
            image = ax.imshow(f[0], cmap="RdBu_r", vmin=-top, vmax=top, interpolation="nearest")
        ax.set_title(f"f{k}", fontsize=7, pad=2)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="weight")
    if random_weights:
        fig.text(0.5, 0.5, "random weights: noise\n(pass --weights FILE for learned filters)",
                 ha="center", va="center", fontsize=16, color="red", alpha=0.6, rotation=20,
                 transform=fig.transFigure)  # fmt: skip
    return fig


def receptive_field_figure(rows: list[dict], resolution: int, title: str):
    """Receptive-field size (rows) of each listed layer against depth, the layers named on the
    axis, with the image size."""
    plt = _pyplot()
    depth = np.arange(len(rows))
    local = np.array([not r["whole_image"] for r in rows])
    sizes = np.array([r["rf_size"][0] for r in rows])
    fig, ax = plt.subplots(figsize=(max(8.0, 0.16 * len(rows) + 2), 5.5))
    ax.plot(depth[local], sizes[local], marker=".", label="receptive field (rows), recurrence")
    if not local.all():  # after a global pooling every unit sees the whole image
        ax.plot(depth[~local], np.full((~local).sum(), resolution), "x", color="tab:red",
                label="whole image (after a global pooling / SE gate)")  # fmt: skip
    ax.axhline(
        resolution, color="black", linestyle="--", linewidth=1, label=f"image ({resolution} px)"
    )
    ax.set_xticks(depth, [r["name"] for r in rows], rotation=90, fontsize=6)
    ax.set(xlabel="layer (where the shape or field changes)", ylabel="pixels", title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path
