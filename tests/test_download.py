"""scratchnets.data.download against a local HTTP server (127.0.0.1, random port) serving a test zip.

The server honours ``Range: bytes=N-`` (``SimpleHTTPRequestHandler`` does not), can drop the
connection part-way through the first response, and logs every request it receives.
"""

from __future__ import annotations

import io
import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scratchnets import cli, data
from scratchnets.data.download import DATASET_DIRNAME


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


def _zip(folders=("train/cats", "train/dogs", "validation/cats", "validation/dogs"), n=3) -> bytes:
    """``cats_and_dogs_filtered/<folder>/<class>.<k>.jpg`` for every folder, plus a stray file."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for f, folder in enumerate(folders):
            for k in range(n):
                name = f"{folder.split('/')[1][:-1]}.{k}.jpg"
                zf.writestr(f"{DATASET_DIRNAME}/{folder}/{name}", _jpeg(10 * f + k))
        zf.writestr(f"{DATASET_DIRNAME}/vectorize.py", "print('not data')\n")
    return out.getvalue()


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.payload`` at any path; honours ``Range``; may cut the first response short."""

    def do_GET(self):
        server = self.server
        server.requests.append(self.headers.get("Range"))
        body = server.payload
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match.group(1)) if match else 0
        if server.status != 200:
            self.send_error(server.status)
            return
        if start >= len(body) and match:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.end_headers()
            return
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if server.cut_after is not None:  # announce everything, send a part, hang up
            self.wfile.write(body[start : start + server.cut_after])
            server.cut_after = None
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.payload, httpd.requests, httpd.cut_after, httpd.status = _zip(), [], None, 200
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/{DATASET_DIRNAME}.zip"
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)
    assert not thread.is_alive()


def _download(dest, url, **kwargs):
    return data.download_cats_and_dogs(
        dest, url, progress=False, timeout=5, retry_wait=0.0, **kwargs
    )


def _leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir() if p.name != DATASET_DIRNAME)


def test_download_verifies_extracts_and_reuses_the_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHNETS_CACHE", str(tmp_path / "cache"))
    path = data.download_cats_and_dogs(url=server.url, progress=False, timeout=5)
    assert path == tmp_path / "cache" / DATASET_DIRNAME
    assert _leftovers(tmp_path / "cache") == []  # no .zip, .part or temporary folder left
    splits = data.find_splits(path)
    assert splits["train"].counts() == {"cat": 3, "dog": 3} and splits["val"].counts() == {
        "cat": 3,
        "dog": 3,
    }
    assert (path / "train" / "cats" / "cat.1.jpg").read_bytes() == _jpeg(1)
    assert server.requests == [None]
    server.status = 500  # the network is not consulted again
    assert data.download_cats_and_dogs(url=server.url, progress=False) == path
    assert server.requests == [None]


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    cut = len(server.payload) // 3
    server.cut_after = cut
    path = _download(tmp_path, server.url)
    assert server.requests == [None, f"bytes={cut}-"]
    assert (path / "validation" / "dogs" / "dog.2.jpg").read_bytes() == _jpeg(32)
    assert _leftovers(tmp_path) == []


def test_a_part_file_from_an_earlier_run_is_resumed(server, tmp_path):
    have = len(server.payload) - 100
    (tmp_path / f"{DATASET_DIRNAME}.zip.part").write_bytes(server.payload[:have])
    _download(tmp_path, server.url)
    assert server.requests == [f"bytes={have}-"]
    complete = tmp_path / "again"  # a .part that is already whole: the server answers 416
    complete.mkdir()
    (complete / f"{DATASET_DIRNAME}.zip.part").write_bytes(server.payload)
    assert _download(complete, server.url) == complete / DATASET_DIRNAME


def _flip_byte_in_member_data(payload: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        info = zf.infolist()[0]
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 5
    return payload[:offset] + bytes([payload[offset] ^ 0xFF]) + payload[offset + 1 :]


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"<html>quota exceeded</html>", "not a valid zip archive"),
        (_flip_byte_in_member_data(_zip()), "corrupt|not a valid zip"),
        (
            _zip(folders=("train/cats", "train/dogs", "validation/cats")),
            "lacks images in .*validation/dogs",
        ),
    ],
    ids=["not-a-zip", "bad-crc", "wrong-layout"],
)
def test_a_bad_archive_is_rejected_and_not_kept(server, tmp_path, payload, message):
    server.payload = payload
    with pytest.raises(data.DownloadError, match=message) as info:
        _download(tmp_path, server.url)
    assert server.url in str(info.value)
    assert _leftovers(tmp_path) == [] and not (tmp_path / DATASET_DIRNAME).exists()
    server.payload = _zip()  # the next call downloads afresh and succeeds
    assert _download(tmp_path, server.url).is_dir()


def test_network_failures_name_the_url(server, tmp_path):
    server.status = 404
    with pytest.raises(data.DownloadError, match=rf"{re.escape(server.url)} failed: HTTP 404"):
        _download(tmp_path, server.url)
    assert len(server.requests) == 1  # a 404 is not retried
    closed = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    dead_url = f"http://127.0.0.1:{closed.server_address[1]}/x.zip"
    closed.server_close()  # nothing listens on that port now
    with pytest.raises(
        data.DownloadError, match=rf"could not download {re.escape(dead_url)} after 2 attempts"
    ):
        _download(tmp_path, dead_url, retries=1)


def test_cli_data_download_prints_the_dataset_folder(server, tmp_path, capsys):
    assert (
        cli.main(["data", "download", "--dest", str(tmp_path), "--url", server.url, "--quiet"]) == 0
    )
    assert capsys.readouterr().out.strip() == str(tmp_path / DATASET_DIRNAME)
    assert cli.main(["data", "info", str(tmp_path / DATASET_DIRNAME)]) == 0
    assert "classes ['cat', 'dog']" in capsys.readouterr().out
    server.status = 503
    assert (
        cli.main(
            ["data", "download", "--dest", str(tmp_path / "other"), "--url", server.url, "--quiet"]
        )
        == 1
    )
    assert "HTTP 503" in capsys.readouterr().err
