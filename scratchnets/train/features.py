"""Head-only epochs on cached features: a frozen backbone computes each image once.

While the backbone is frozen (``freeze_backbone``, or the first ``head_only_epochs`` of the
finetune recipe) it is a fixed function in eval mode, so its output for an image never changes:
computing it for every image of every epoch spends nearly all of the epoch on a forward pass
whose result is already known. ``FrozenFeatures`` runs the backbone once over the training
images (the evaluation crop and its mirror image: two views) and the validation images; a
head-only epoch then draws each training image's view from the cache (the mirror with
probability 1/2, seeded per image and epoch like the loader's augmentation) and trains only the
head, in the loader's order and batches, so the schedule, the checkpoints and ``--resume`` see
the same steps. Validation of a head-only epoch runs the head on the cached validation
features: the same function as the whole model in eval mode.

What changes against head-only epochs through the backbone: the training views are the
evaluation crop and its mirror instead of the recipe's random crops and colour changes, and a
stochastic layer inside the backbone (dropout) is off, as it is in eval mode. Measured on
MobileNetV2 1.0 at 224 px (2 cores): a head-only epoch through the backbone took 33 s, the cache
~70 s once (2,000 images twice and 1,000 once), a cached epoch well under a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import data
from ..models.fuse import EvalFastPath
from ..nn import Module, Sequential


def head_of(model: Module, first: int) -> Sequential:
    """The children of ``model`` from ``first`` on, as one Sequential sharing them."""
    return Sequential(*list(model.children())[first:])


class FrozenFeatures:
    """The frozen children's outputs (``model``'s children before ``first``, in eval mode, on the
    eval fast path where the model has one) for every training image (evaluation crop, and
    mirrored) and every validation image; unreadable images are left out, as the loader does."""

    def __init__(self, model: Module, first: int, train_set, val_set, transforms,
                 batch_size: int, progress: bool = True):  # fmt: skip
        modes = [m.training for m in model.modules()]
        model.eval()
        try:
            fast = isinstance(model, EvalFastPath) and model._runs_fast()
            source = model._inference_copy() if fast else model
            backbone = Sequential(*list(source.children())[:first]).eval()
            train = _features(backbone, train_set, transforms, batch_size, progress, True)
            val = _features(backbone, val_set, transforms, batch_size, progress, False)
        finally:
            for module, mode in zip(model.modules(), modes, strict=True):
                module.training = mode
        self.train_views, self.train_labels, self.readable = train
        self.val_features, self.val_labels, _ = val

    def train_batches(self, order: np.ndarray, batch_size: int, start: int, seed: int,
                      epoch: int, loader) -> Iterator[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
        """The loader's batches of one epoch (``order``, from batch ``start``, full batches
        only, unreadable images left out) as cached features: each image's mirror view with
        probability 1/2, drawn from ``data.sample_rng(seed, epoch, index)``. ``loader`` moves on
        as its own iteration would (``batch_index``, then the next epoch: what a checkpoint
        records)."""
        for b in range(start, len(order) // batch_size):
            indices = [int(i) for i in order[b * batch_size : (b + 1) * batch_size]]
            indices = [i for i in indices if self.readable[i]]
            mirror = [int(data.sample_rng(seed, epoch, i).random() < 0.5) for i in indices]
            loader.batch_index = b + 1
            if indices:
                yield (np.ascontiguousarray(self.train_views[indices, mirror]),
                       self.train_labels[indices])  # fmt: skip
        loader.set_epoch(epoch + 1, 0)

    def val_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self.val_labels), batch_size):
            stop = start + batch_size
            yield self.val_features[start:stop], self.val_labels[start:stop]


def _features(backbone, dataset, transforms, batch_size, progress, mirrored):
    """``(features, labels, readable)`` of every image of ``dataset``: features (N, 2, ...)
    with the mirror image second when ``mirrored`` (rows of unreadable images zero, ``readable``
    False), else (readable images, ...). The next batch decodes on a thread meanwhile."""
    from tqdm.auto import tqdm

    chunks = [
        range(s, min(s + batch_size, len(dataset))) for s in range(0, len(dataset), batch_size)
    ]
    same = np.random.default_rng(0)  # evaluation transforms draw nothing

    def decode(chunk):
        items = [(i, dataset.get(i)) for i in chunk]
        items = [(i, item) for i, item in items if item is not None]
        images = [transforms(image, same) for _, (image, _) in items]
        return [i for i, _ in items], images, [label for _, (_, label) in items]

    readable = np.zeros(len(dataset), bool)
    rows, labels = {}, np.zeros(len(dataset), np.int64)
    with ThreadPoolExecutor(1) as pool, tqdm(
        total=len(dataset), desc=f"features of {dataset.name}", unit="img",
        disable=not progress, leave=False, dynamic_ncols=True,
    ) as bar:  # fmt: skip
        pending = pool.submit(decode, chunks[0]) if chunks else None
        for k in range(len(chunks)):
            indices, images, chunk_labels = pending.result()
            if k + 1 < len(chunks):
                pending = pool.submit(decode, chunks[k + 1])
            if indices:
                x = np.stack(images)
                views = [backbone(x)]
                if mirrored:
                    views.append(backbone(np.ascontiguousarray(x[..., ::-1])))
                for row, i in enumerate(indices):
                    rows[i] = [np.asarray(v[row]) for v in views]
                readable[indices], labels[indices] = True, chunk_labels
            bar.update(len(chunks[k]))
    if not rows:
        raise ValueError(f"no readable image in {dataset.name} to compute features of")
    shape = next(iter(rows.values()))[0].shape
    if mirrored:
        features = np.zeros((len(dataset), 2, *shape), next(iter(rows.values()))[0].dtype)
        for i, views in rows.items():
            features[i] = views
        return features, labels, readable
    kept = sorted(rows)
    return np.stack([rows[i][0] for i in kept]), labels[kept], readable
