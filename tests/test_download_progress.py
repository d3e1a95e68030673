"""Downloads show a progress bar on a terminal and nothing elsewhere; no network: Zenodo is a
fake response serving a synthetic file."""

from __future__ import annotations

import hashlib
import io
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import bench.data as bd


class FakeStderr(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class FakeResponse:
    """What urlopen returns, served in small chunks so the bar advances several times."""

    def __init__(self, body: bytes, sized: bool) -> None:
        self.body = io.BytesIO(body)
        self.headers = {"Content-Length": str(len(body))} if sized else {}

    def read(self, n: int = -1) -> bytes:
        return self.body.read(min(n, 4096))

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.fixture
def zenodo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A synthetic breastmnist.npz as the 'official' file (its md5 made the official one)."""
    bd.write_synthetic("breastmnist", tmp_path / "src", n=(40, 10, 10), seed=0)
    body = (tmp_path / "src" / "breastmnist.npz").read_bytes()
    monkeypatch.setattr(bd.DatasetInfo, "md5", lambda self, size: hashlib.md5(body).hexdigest())
    monkeypatch.delenv("MEDBENCH_OFFLINE", raising=False)
    urls: list[str] = []

    def serve(sized: bool):
        def urlopen(url, *args, **kwargs):
            urls.append(url)
            return FakeResponse(body, sized)

        monkeypatch.setattr(urllib.request, "urlopen", urlopen)

    return body, urls, serve


@pytest.mark.parametrize("sized", [True, False])
def test_download_shows_progress_on_a_terminal(zenodo, tmp_path, monkeypatch, sized):
    body, urls, serve = zenodo
    serve(sized)
    err = FakeStderr(tty=True)
    monkeypatch.setattr(sys, "stderr", err)
    arrays = bd.load_arrays("breastmnist", 28, tmp_path / "data")
    assert urls == [bd.dataset_info("breastmnist").url(28)]
    assert (tmp_path / "data" / "breastmnist.npz").read_bytes() == body
    assert len(arrays["train_images"]) == 40 and np.all(arrays["val_labels"] >= 0)
    shown = err.getvalue()
    assert "breastmnist.npz from Zenodo" in shown
    kb = f"{len(body) / 1000:.1f}"
    assert f"{kb}/{kb if sized else '?'} kB" in shown  # bytes done / total (? unknown)


def test_download_is_quiet_off_a_terminal(zenodo, tmp_path, monkeypatch, capfd):
    body, _, serve = zenodo
    serve(True)
    err = FakeStderr(tty=False)
    monkeypatch.setattr(sys, "stderr", err)
    bd.ensure_file("breastmnist", 28, tmp_path / "data")
    assert (tmp_path / "data" / "breastmnist.npz").read_bytes() == body
    assert err.getvalue() == ""
    assert capfd.readouterr() == ("", "")
