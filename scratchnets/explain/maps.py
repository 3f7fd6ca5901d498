"""Pictures for ``scratchnets explain MODEL --save-maps DIR``: a layer's feature maps and the first
conv's filters as PNG grids (Pillow), and the receptive-field size against depth (matplotlib)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

#: smallest side of one tile in a grid, in pixels (small maps are enlarged, nearest neighbour)
TILE = 48
GAP = 2  # pixels between tiles


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) of a near-square grid for ``count`` tiles."""
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Each tile stretched to 0..255 on its own (a constant tile is mid-grey)."""
    lo, hi = float(a.min()), float(a.max())
    if hi == lo:
        return np.full(a.shape, 128, np.uint8)
    return np.round((a - lo) / (hi - lo) * 255).astype(np.uint8)


def tile_grid(tiles: np.ndarray) -> np.ndarray:
    """(K, h, w) or (K, h, w, 3) tiles -> one uint8 image of a near-square grid with gaps; each
    tile normalised on its own and enlarged by a whole factor to at least ``TILE`` pixels."""
    K, h, w = tiles.shape[:3]
    scale = max(1, math.ceil(TILE / max(h, w)))
    rows, columns = grid_shape(K)
    H, W = h * scale, w * scale
    canvas = np.full((rows * (H + GAP) - GAP, columns * (W + GAP) - GAP, *tiles.shape[3:]), 255,
                     np.uint8)  # fmt: skip
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        big = np.kron(_to_uint8(tile), np.ones((scale, scale) + (1,) * (tile.ndim - 2), np.uint8))
        canvas[r * (H + GAP) : r * (H + GAP) + H, c * (W + GAP) : c * (W + GAP) + W] = big
    return canvas


def save_png(image: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def feature_maps_png(maps: np.ndarray, path: Path, limit: int = 64) -> Path:
    """The first ``limit`` channels of one image's maps (C, H, W) as a grid."""
    return save_png(tile_grid(np.asarray(maps[:limit], np.float64)), path)


def filters_png(w: np.ndarray, path: Path) -> Path:
    """A conv's filters (C_out, C_in, kh, kw): RGB tiles when C_in is 3 (a first conv), else the
    filters' first input channel in grey."""
    w = np.asarray(w, np.float64)
    tiles = w.transpose(0, 2, 3, 1) if w.shape[1] == 3 else w[:, 0]
    return save_png(tile_grid(tiles), path)


def receptive_field_png(rows: list[dict], resolution: int, path: Path, title: str) -> Path:
    """Receptive-field size (rows) of each listed layer against its depth, with the image size."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "the receptive-field plot needs matplotlib: pip install 'scratchnets[plot]'"
        ) from None
    depth = np.arange(1, len(rows) + 1)
    local = np.array([not r["whole_image"] for r in rows])
    sizes = np.array([r["rf_size"][0] for r in rows])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(depth[local], sizes[local], marker=".", label="receptive field (rows), recurrence")
    if not local.all():  # after a global pooling every unit sees the whole image
        ax.plot(depth[~local], np.full((~local).sum(), resolution), "x", color="tab:red",
                label="whole image (after a global pooling / SE gate)")  # fmt: skip
    ax.axhline(
        resolution, color="black", linestyle="--", linewidth=1, label=f"image ({resolution} px)"
    )
    ax.set(xlabel="layer (where the shape or field changes)", ylabel="pixels", title=title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
