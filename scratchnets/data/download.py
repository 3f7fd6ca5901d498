"""Download ``cats_and_dogs_filtered.zip`` (the TensorFlow tutorials' 2,000-image subset) into a cache.

The archive (about 65 MiB) is fetched over HTTP(S) into ``<cache>/cats_and_dogs_filtered.zip.part``;
an interrupted transfer is resumed with an HTTP ``Range`` request, within the call (up to
``retries`` times) and across calls (the ``.part`` file stays). The finished archive must pass
``zipfile.testzip()`` (every member's CRC) and hold ``cats_and_dogs_filtered/{train,validation}/
{cats,dogs}/`` images; it is extracted into a temporary folder that is then renamed into place, so
``<cache>/cats_and_dogs_filtered`` exists only when complete. A later call finds it and does not
touch the network.

Cache folder: ``$SCRATCHNETS_CACHE`` if set, else ``~/.cache/scratchnets``.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

DEFAULT_URL = "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"
DATASET_DIRNAME = "cats_and_dogs_filtered"
#: folders the archive must contain, each with at least one image
EXPECTED_FOLDERS = ("train/cats", "train/dogs", "validation/cats", "validation/dogs")
_CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """The dataset could not be downloaded or the download is not a valid archive."""


def default_cache_dir() -> Path:
    """``$SCRATCHNETS_CACHE``, else ``~/.cache/scratchnets``."""
    env = os.environ.get("SCRATCHNETS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "scratchnets"


def _is_complete(folder: Path) -> bool:
    return all((folder / sub).is_dir() for sub in EXPECTED_FOLDERS)


def download_cats_and_dogs(
    dest: str | Path | None = None,
    url: str = DEFAULT_URL,
    *,
    progress: bool = True,
    retries: int = 5,
    timeout: float = 30.0,
    retry_wait: float = 0.5,
) -> Path:
    """Path of the extracted ``cats_and_dogs_filtered`` folder under ``dest``, downloading if needed.

    ``find_splits`` reads the returned folder (``train/``, ``validation/``, classes ``cat``, ``dog``).
    Raises :class:`DownloadError` naming ``url`` on network failure or an invalid archive (which is
    deleted, so the next call downloads afresh).
    """
    dest = Path(dest).expanduser() if dest is not None else default_cache_dir()
    final = dest / DATASET_DIRNAME
    if _is_complete(final):
        return final
    if final.exists():
        raise DownloadError(
            f"{final} exists but is incomplete (no {', '.join(EXPECTED_FOLDERS)}); remove it and retry"
        )
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / f"{DATASET_DIRNAME}.zip"
    if not archive.exists():
        _fetch(
            url, archive, progress=progress, retries=retries, timeout=timeout, retry_wait=retry_wait
        )
    try:
        members = _verify_archive(archive, url)
    except DownloadError:
        archive.unlink()  # never keep an archive that failed its checks: the next call refetches
        raise
    _extract_atomically(archive, members, dest, final)
    archive.unlink()
    return final


def _fetch(
    url: str, archive: Path, *, progress: bool, retries: int, timeout: float, retry_wait: float
) -> None:
    """Download ``url`` to ``archive``, through ``archive.part``, resuming after dropped connections."""
    from tqdm.auto import tqdm

    part = archive.with_name(archive.name + ".part")
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        headers = (
            {"User-Agent": "scratchnets", "Range": f"bytes={have}-"}
            if have
            else {"User-Agent": "scratchnets"}
        )
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=timeout
            ) as resp:
                start, total = _resume_point(resp, have)
                if start is None:  # not the range asked for: start again from byte 0
                    part.unlink()
                    raise ConnectionError(
                        f"unexpected Content-Range {resp.headers.get('Content-Range')!r}"
                    )
                with (
                    open(part, "ab" if start else "wb") as f,
                    tqdm(
                        total=total,
                        initial=start,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=archive.name,
                        disable=not progress,
                    ) as bar,
                ):
                    while chunk := resp.read(_CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
            size = part.stat().st_size
            if total is not None and size < total:  # the server closed early: resume
                raise ConnectionError(f"connection closed after {size} of {total} bytes")
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # nothing left past our end: the .part is whole (or bad)
                break
            raise DownloadError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            failures += 1
            if failures > retries:
                reason = getattr(exc, "reason", exc)
                raise DownloadError(
                    f"could not download {url} after {failures} attempts ({reason}); check the network, "
                    f"or download it yourself and pass the extracted folder with --data"
                ) from exc
            time.sleep(retry_wait * 2 ** (failures - 1))
    os.replace(part, archive)


def _resume_point(resp, have: int) -> tuple[int | None, int | None]:
    """``(offset the body starts at, total size or None)``; offset ``None`` for an unusable range."""
    length = resp.headers.get("Content-Length")
    if resp.status == 206:
        match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == have:
            return have, (int(match.group(2)) if match.group(2) != "*" else None)
        return None, None
    return 0, (int(length) if length is not None else None)  # 200: the whole file from the start


def _verify_archive(archive: Path, url: str) -> list[zipfile.ZipInfo]:
    """The members to extract, after checking CRCs, member paths and the expected folders."""
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            infos = zf.infolist()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:  # zlib: bad deflate data
        raise DownloadError(
            f"the file downloaded from {url} is not a valid zip archive (or is damaged): {exc}"
        ) from exc
    if bad is not None:
        raise DownloadError(
            f"the zip archive downloaded from {url} is corrupt: member {bad!r} fails its CRC check"
        )
    members = []
    for info in infos:
        name = PurePosixPath(info.filename)
        if name.is_absolute() or ".." in name.parts:
            raise DownloadError(
                f"the zip archive from {url} has an unsafe member path {info.filename!r}"
            )
        if name.parts and name.parts[0] != "__MACOSX":
            members.append(info)
    names = {PurePosixPath(m.filename) for m in members}
    missing = [
        sub
        for sub in EXPECTED_FOLDERS
        if not any(
            n.parent == PurePosixPath(DATASET_DIRNAME, sub) and n.suffix.lower() == ".jpg"
            for n in names
        )
    ]
    if missing:
        raise DownloadError(
            f"the zip archive from {url} lacks images in {', '.join(f'{DATASET_DIRNAME}/{m}' for m in missing)}"
        )
    return members


def _extract_atomically(
    archive: Path, members: list[zipfile.ZipInfo], dest: Path, final: Path
) -> None:
    """Extract into a temporary folder inside ``dest``, then rename the dataset folder into place."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp, members=members)
        os.replace(tmp / DATASET_DIRNAME, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
