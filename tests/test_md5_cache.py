"""bench.data.file_md5's cache: any rewrite of a file is hashed again, whatever its size and
mtime, so a stale md5 never vouches for a changed file."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from bench.data import file_md5


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "medbench" / "md5.json"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_same_size_rewrite_with_a_new_mtime(tmp_path: Path, cache_home: Path) -> None:
    f = tmp_path / "a.npz"
    f.write_bytes(b"A" * 4096)
    assert file_md5(f) == _md5(f)
    st = f.stat()
    f.write_bytes(b"B" * 4096)  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a later mtime, same size
    assert file_md5(f) == _md5(f) == hashlib.md5(b"B" * 4096).hexdigest()
    assert len(json.loads(cache_home.read_text())) == 1  # the stale entry is gone


def test_same_size_rewrite_in_place_with_the_old_mtime(tmp_path: Path, cache_home: Path) -> None:
    """`touch -r`: the mtime is put back after an in-place rewrite; the ctime still moves."""
    f = tmp_path / "b.npz"
    f.write_bytes(b"A" * 4096)
    before = file_md5(f)
    time.sleep(0.05)  # past the kernel's timestamp tick (ctime moves in ticks of a few ms)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))  # ctime moves on, mtime back
    st = f.stat()
    with open(f, "r+b") as fh:
        fh.write(b"C")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert file_md5(f) == _md5(f) != before


def test_replaced_by_a_copy_with_the_same_size_and_mtime(tmp_path: Path, cache_home: Path) -> None:
    """`cp -p` / `rsync -t` of another file over it: same size, same mtime, a new inode."""
    f, other = tmp_path / "c.npz", tmp_path / "other"
    f.write_bytes(b"A" * 4096)
    before = file_md5(f)
    st = f.stat()
    other.write_bytes(b"D" * 4096)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, f)
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert file_md5(f) == _md5(f) != before


def test_unchanged_file_is_served_from_the_cache(tmp_path: Path, cache_home: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "d.npz"
    f.write_bytes(b"E" * 100)
    want = file_md5(f)
    monkeypatch.setattr(hashlib, "md5", lambda *a, **k: pytest.fail("hashed again"))
    assert file_md5(f) == want
