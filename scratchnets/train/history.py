"""Per-epoch training history: ``history.csv``, ``history.json`` and ``history.png``.

One row per finished epoch (``epoch`` counts from 1)::

    epoch, train_loss, train_accuracy, val_loss, val_accuracy, lr, train_size, epoch_time_s,
    images_per_s, elapsed_s

``train_*`` are running means over the epoch's batches, taken in train mode with augmentation (as
Keras and timm report them); ``val_*`` come from the epoch-end evaluation without augmentation
(of the EMA weights when EMA is on); ``lr`` is the learning rate of the epoch's last step;
``train_size`` the pixel size of its training crops (progressive resizing changes it). The PNG
(matplotlib, Agg backend, no display needed) shows loss and accuracy per epoch, train vs val,
with a dotted line where the training size changes. All three files are rewritten atomically
after every epoch.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from .checkpointing import atomic_write, atomic_write_text

FIELDS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "train_size",
    "epoch_time_s",
    "images_per_s",
    "elapsed_s",
)


def history_csv(history: Sequence[dict]) -> str:
    """The rows as CSV text with a header of :data:`FIELDS`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k) for k in FIELDS})
    return buffer.getvalue()


def plot_history(history: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Two panels, loss and accuracy against epoch, train (solid) vs val (dashed), a dotted line
    and the new size where the training size changes; PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display, in threads and in CI
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(9, 3.6), dpi=100)
    for i, (metric, label) in enumerate((("loss", "loss"), ("accuracy", "accuracy"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for split, style in (("train", "-o"), ("val", "--s")):
            ax.plot(epochs, [row[f"{split}_{metric}"] for row in history], style, ms=3, label=split)
        _mark_size_changes(ax, history)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _mark_size_changes(ax, history: Sequence[dict]) -> None:
    """A dotted line before each epoch whose training size differs from the one before, and
    each stage's size at the top of the panel (nothing for a run at one size)."""
    sizes = [row.get("train_size") for row in history]  # absent in runs saved before it
    if None in sizes or len(set(sizes)) < 2:
        return
    starts = [0] + [i for i in range(1, len(sizes)) if sizes[i] != sizes[i - 1]]
    for i in starts:
        x = history[i]["epoch"] - 0.5
        if i:
            ax.axvline(x, color="0.5", linestyle=":", linewidth=1)
        # the first stage starts left of the x range: its label at the panel's left edge
        at, transform = (x, ax.get_xaxis_transform()) if i else (0.0, ax.transAxes)
        ax.text(at, 1.0, f" {sizes[i]} px", transform=transform, fontsize=8, color="0.35",
                va="top")  # fmt: skip


def write_history(out_dir: str | Path, history: Sequence[dict], title: str = "") -> dict[str, Path]:
    """Write ``history.csv``, ``history.json`` and ``history.png`` into ``out_dir``; their paths."""
    out_dir = Path(out_dir)
    paths = {
        "csv": atomic_write_text(out_dir / "history.csv", history_csv(history)),
        "json": atomic_write_text(out_dir / "history.json", json.dumps(list(history), indent=1)),
    }
    if history:
        paths["png"] = plot_history(history, out_dir / "history.png", title)
    return paths
