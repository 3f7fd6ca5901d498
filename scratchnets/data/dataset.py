"""Decoded-image cache and a background-thread batch loader.

``ImageFolderDataset`` decodes each file once, resizes it so its shorter side is ``cache_size``
(a little more than the training size: ``resize_size(image_size)``, 146 for 128) and keeps the
``uint8`` pixels in memory, so epochs after the first do no JPEG decoding. An optional on-disk cache
of ``.npy`` files (keyed by the file's absolute path, modification time, size and ``cache_size``)
carries the work over to the next run. Unreadable files are skipped, counted, and reported with one
warning per split.

``DataLoader`` shuffles, applies the per-sample transforms and stacks ``(x, y)`` batches --
``x`` float32 ``(N, 3, S, S)``, ``y`` int64 ``(N,)`` -- built by ``workers`` background threads
(Pillow and NumPy release the GIL while they work) ahead of the consumer, at most ``prefetch``
batches at a time.

Reproducibility: everything random is drawn from generators seeded by ``(seed, epoch, ...)`` --
the epoch's order from ``(seed, epoch, 0)``, sample ``i``'s augmentation from ``(seed, epoch, 1, i)``
-- never from the order in which threads run. So a batch depends only on ``(seed, epoch, batch
index)``, and the loader's whole state is that triple: ``state_dict()`` after ``k`` batches, then
``load_state_dict`` in a new process, yields exactly the remaining batches.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .decode import CorruptImageError, open_rgb
from .folders import ImageList
from .transforms import resize_shorter_pil, resize_size

#: generator stream ids (the third seed word) for the epoch order, per-sample and per-batch draws
_ORDER, _SAMPLE, _BATCH = 0, 1, 2


class ImageFolderDataset:
    """Images of an :class:`ImageList` as cached ``(H, W, 3)`` uint8 arrays with shorter side ``cache_size``.

    ``dataset[i]`` -> ``(pixels, label)`` (pixels read-only: they are the cached copy), raising :class:`CorruptImageError` for an unreadable file;
    :meth:`get` returns ``None`` for it instead, counting it in ``skipped``. ``stats`` counts
    decodes, memory hits and disk hits. Memory use is about ``n * cache_size^2 * 3 * 1.3`` bytes
    (~170 MB for 2,000 images at 146).
    """

    def __init__(
        self,
        images: ImageList,
        image_size: int,
        *,
        cache_size: int | None = None,
        memory_cache: bool = True,
        cache_dir: str | Path | None = None,
        name: str = "dataset",
    ):
        self.images = images
        self.classes = images.classes
        self.image_size = int(image_size)
        self.cache_size = (
            int(cache_size) if cache_size is not None else resize_size(self.image_size)
        )
        if self.cache_size < self.image_size:
            raise ValueError(
                f"cache_size {self.cache_size} is smaller than image_size {self.image_size}"
            )
        self.memory_cache = memory_cache
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._memory: dict[int, np.ndarray] = {}
        self.skipped: dict[int, CorruptImageError] = {}  # index -> why it was skipped
        self._reported = 0  # how many of ``skipped`` a warning has covered
        self._lock = threading.Lock()
        self.stats = {"decoded": 0, "memory_hits": 0, "disk_hits": 0}

    def __len__(self) -> int:
        return len(self.images)

    def _disk_path(self, index: int) -> Path:
        """``cache_dir/<sha1(path, mtime, size, cache_size)>.npy``: a changed file gets a new key."""
        path = Path(self.images.paths[index]).resolve()
        st = path.stat()
        key = f"{path}|{st.st_mtime_ns}|{st.st_size}|{self.cache_size}"
        return self.cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()}.npy"

    def _decode(self, index: int) -> np.ndarray:
        """Decode (JPEG draft at >= cache_size) and resize the shorter side to ``cache_size``."""
        img = open_rgb(self.images.paths[index], min_size=self.cache_size)
        with self._lock:
            self.stats["decoded"] += 1
        return np.asarray(resize_shorter_pil(img, self.cache_size))

    def _load(self, index: int) -> np.ndarray:
        if index in self._memory:
            with self._lock:
                self.stats["memory_hits"] += 1
            return self._memory[index]
        disk = self._disk_path(index) if self.cache_dir is not None else None
        if disk is not None and disk.exists():
            pixels = np.load(disk)
            with self._lock:
                self.stats["disk_hits"] += 1
        else:
            pixels = self._decode(index)
            if disk is not None:
                _save_npy_atomically(disk, pixels)
        pixels.flags.writeable = (
            False  # shared by every epoch: a transform must not edit it in place
        )
        if self.memory_cache:
            self._memory[index] = pixels
        return pixels

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self._load(index), int(self.images.labels[index])

    def get(self, index: int) -> tuple[np.ndarray, int] | None:
        """``dataset[index]``, or ``None`` (and the file recorded in ``skipped``) if it is unreadable."""
        if index in self.skipped:
            return None
        try:
            return self[index]
        except CorruptImageError as exc:
            with self._lock:
                self.skipped[index] = exc
            return None

    def require_a_readable_image(self) -> None:
        """Raise ValueError, naming the first failure, unless some image decodes (stops at the
        first that does, so a healthy folder costs one decode)."""
        for index in range(len(self)):
            if self.get(index) is not None:
                return
        first = next(iter(self.skipped.values()), "no files")
        raise ValueError(
            f"{self.name}: none of the {len(self)} images can be read (first: {first}); "
            "--data DIR needs a folder of readable images"
        )

    def report_skipped(self) -> None:
        """Warn once about files skipped since the last report: the count and the first one's reason."""
        with self._lock:
            new = list(self.skipped)[self._reported :]  # dicts keep the order files were found in
            self._reported = len(self.skipped)
        if new:
            first = self.skipped[new[0]]
            warnings.warn(
                f"{self.name}: skipped {len(new)} unreadable image(s) of {len(self)} "
                f"(first: {first}); see dataset.skipped for all",
                RuntimeWarning,
                stacklevel=2,
            )

    def preload(self, workers: int = 1, progress: bool = False) -> None:
        """Decode every image now (filling the caches) and report unreadable ones."""
        from tqdm.auto import tqdm

        with ThreadPoolExecutor(max(1, workers)) as pool:
            results = pool.map(self.get, range(len(self)))
            for _ in tqdm(
                results,
                total=len(self),
                desc=f"decoding {self.name}",
                disable=not progress,
                unit="img",
            ):
                pass
        self.report_skipped()


def _save_npy_atomically(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to a temporary file beside ``path`` and rename it: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for sample ``index``'s augmentation in ``epoch``."""
    return np.random.default_rng([seed, epoch, _SAMPLE, index])


class DataLoader:
    """Shuffled, augmented ``(x float32 (N, 3, S, S), y int64 (N,))`` batches, prepared in the background.

    Iterating runs the current epoch from the current batch index; when the epoch is exhausted the
    epoch advances and the index returns to 0, so ``for epoch ...: for x, y in loader`` walks
    epochs, and a loader restored with :meth:`load_state_dict` picks up mid-epoch. A batch whose
    every file is unreadable is not yielded (the batch numbering is unchanged; unreadable files are
    dropped from their batch, so a batch can be smaller than ``batch_size``).

    ``transforms(img, rng)`` maps a cached uint8 image to a float32 (3, S, S) array (see
    ``transforms.train_transforms`` / ``eval_transforms``); ``batch_transform(x, y, rng)`` (e.g. a
    ``mixup`` partial) may then replace the whole batch. ``workers=0`` builds batches in the
    calling thread.
    """

    def __init__(
        self,
        dataset: ImageFolderDataset,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        transforms: Callable | None = None,
        workers: int = 1,
        prefetch: int = 4,
        batch_transform: Callable | None = None,
    ):
        if batch_size < 1 or workers < 0 or prefetch < 1 or seed < 0:
            raise ValueError(
                f"need batch_size >= 1, workers >= 0, prefetch >= 1, seed >= 0; got {batch_size}, "
                f"{workers}, {prefetch}, {seed}"
            )
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.transforms = transforms
        self.workers = int(workers)
        self.prefetch = int(prefetch)
        self.batch_transform = batch_transform
        self.epoch = 0
        self.batch_index = 0  # next batch of ``epoch`` to hand out

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = len(self.dataset), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def state_dict(self) -> dict[str, int]:
        """``{"seed", "epoch", "batch_index"}``: everything needed to continue the same stream."""
        return {"seed": self.seed, "epoch": self.epoch, "batch_index": self.batch_index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = int(state["seed"])
        self.set_epoch(state["epoch"], state["batch_index"])

    def set_epoch(self, epoch: int, batch_index: int = 0) -> None:
        """Continue from ``batch_index`` of ``epoch`` at the next iteration."""
        self.epoch, self.batch_index = int(epoch), int(batch_index)

    def order(self, epoch: int) -> np.ndarray:
        """Dataset indices in the order ``epoch`` visits them."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch, _ORDER]).permutation(n)

    def _make_batch(
        self, epoch: int, indices: np.ndarray, batch: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        xs, ys = [], []
        for i in indices:
            item = self.dataset.get(int(i))
            if item is None:
                continue
            img, label = item
            if self.transforms is not None:
                img = self.transforms(img, sample_rng(self.seed, epoch, int(i)))
            xs.append(img)
            ys.append(label)
        if not xs:
            return None
        shapes = {x.shape for x in xs}
        if len(shapes) > 1:
            raise ValueError(
                f"samples of batch {batch} have different shapes {sorted(shapes)}; use transforms that crop to one size"
            )
        x, y = np.stack(xs), np.asarray(ys, dtype=np.int64)
        if self.batch_transform is not None:
            x, y = self.batch_transform(
                x, y, np.random.default_rng([self.seed, epoch, _BATCH, batch])
            )
        return x, y

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch, start = self.epoch, self.batch_index
        order = self.order(epoch)
        jobs = [
            (b, order[b * self.batch_size : (b + 1) * self.batch_size])
            for b in range(start, len(self))
        ]
        batches = self._batches(epoch, jobs)
        try:
            for b, batch in batches:
                self.batch_index = b + 1
                if batch is not None:
                    yield batch
        finally:  # stops the worker threads now, even if the consumer left the loop early
            batches.close()
        self.dataset.report_skipped()
        self.epoch, self.batch_index = epoch + 1, 0

    def _batches(self, epoch: int, jobs: list) -> Iterator[tuple[int, tuple | None]]:
        """``(batch number, batch)`` in order; built ``prefetch`` ahead by ``workers`` threads."""
        if self.workers == 0:
            for b, indices in jobs:
                yield b, self._make_batch(epoch, indices, b)
            return
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="scratchnets-loader")

        def submit(job):
            b, indices = job
            return b, pool.submit(self._make_batch, epoch, indices, b)

        todo = iter(jobs)
        pending: deque = deque()
        try:
            pending.extend(submit(job) for job in itertools.islice(todo, self.prefetch))
            while pending:
                b, future = pending.popleft()
                job = next(todo, None)
                if job is not None:  # keep `prefetch` batches in the making meanwhile
                    pending.append(submit(job))
                yield b, future.result()
        finally:  # normal end, an exception, or the consumer stopped early (generator closed)
            for _, future in pending:
                future.cancel()
            pool.shutdown(wait=True)
