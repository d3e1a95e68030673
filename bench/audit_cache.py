"""Where data audits are stored: a cache per file md5 beside the data (or in the user cache when
the data root is read-only), and a run directory's own copy.

Why apart from bench.audit: an audit of a large 3D file takes minutes, so it is computed once
per file content (md5 and AUDIT_VERSION name it) and written atomically, and a run keeps the
audit its leaderboard used even when the data folder changes later.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bench.data import file_md5
from bench.errors import UserError

AUDIT_VERSION = 1  # part of the cache key: bump when a method or threshold changes


def _user_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "medbench" / "audit"


def cache_name(flag: str, size: int, md5: str) -> str:
    suffix = "" if size == 28 else f"_{size}"
    return f"{flag}{suffix}-{md5}-v{AUDIT_VERSION}.json"


def _writable(folder: Path) -> bool:
    """A folder we may write into. Its mode bits count even for root (who may write anyway):
    a data root marked read-only for everyone (shared, genuine files) is left alone."""
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


def cache_dirs(path: Path) -> list[Path]:
    """Where a file's audit is cached: beside the data, else in the user's cache."""
    beside = path.parent / ".medbench-audit"
    writable = beside.is_dir() and _writable(beside) or _writable(path.parent)
    return [beside, _user_cache()] if writable else [_user_cache()]


def read_cached(path: Path, flag: str, size: int) -> dict[str, Any] | None:
    name = cache_name(flag, size, file_md5(path))
    for folder in (path.parent / ".medbench-audit", _user_cache()):
        try:
            return json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
    return None


def write_cached(path: Path, result: dict[str, Any]) -> Path:
    """Atomically into the data root's cache; the user cache when that is read-only."""
    from bench.results import write_json

    name = cache_name(result["flag"], result["size"], result["md5"])
    last: OSError | None = None
    for folder in cache_dirs(path):
        try:
            return write_json(folder / name, result)
        except OSError as e:
            last = e
    raise UserError(f"cannot write the audit cache ({last}); make {_user_cache()} writable")


def run_audit_path(run_dir: Path, flag: str, size: int) -> Path:
    suffix = "" if size == 28 else f"_{size}"
    return Path(run_dir) / "audit" / f"{flag}{suffix}.json"
