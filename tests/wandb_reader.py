"""Reading offline W&B runs back (tests only): config, history and summary of a ``.wandb`` file.

Why it exists: wandb 0.31 writes no ``config.yaml``/``wandb-history.jsonl`` for offline runs
(everything is in the binary ``.wandb`` log that ``wandb sync`` uploads) and ships no Python
reader for it. The tests check what the benchmark logged through this reader, using wandb's own
protobuf definitions for the records.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class OfflineRun:
    """What an offline ``.wandb`` file holds, decoded to plain Python (values JSON-decoded)."""

    run_id: str
    name: str
    group: str
    job_type: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    tags: list[str]
    complete: bool  # the final ``exit`` record was found: the run was finished and flushed
    exit_code: int | None = None


_BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks, 7-byte record headers
_HEADER = 7


def _records(path: Path) -> list[bytes]:
    """The raw protobuf records of a ``.wandb`` file (LevelDB log framing, no CRC check)."""
    data = path.read_bytes()
    if not data:  # created but not flushed yet
        return []
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log (header {data[:7]!r})")
    pos, pending, out = _HEADER, b"", []
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        pos += _HEADER
        if pos + length > len(data):  # a record still being written
            break
        chunk = data[pos : pos + length]
        pos += length
        if kind == 1:  # FULL
            out.append(chunk)
        elif kind == 2:  # FIRST
            pending = chunk
        elif kind == 3:  # MIDDLE
            pending += chunk
        elif kind == 4:  # LAST
            out.append(pending + chunk)
            pending = b""
    return out


def read_offline_run(run_dir: str | Path, wait_s: float = 10.0) -> OfflineRun:
    """Decode ``<root>/wandb/offline-run-*/run-*.wandb`` into config, history and summary.

    Why: 0.31 writes no ``config.yaml``/``wandb-history.jsonl`` for offline runs (everything is
    in the binary ``.wandb`` log that ``wandb sync`` uploads), and ``wandb`` no longer ships a
    Python reader for it. Uses ``wandb``'s own protobuf definitions.

    ``run.finish()`` returns before the wandb-core writer has flushed and closed the file (we
    measured reads right after ``finish`` that saw an empty file), so this re-reads for up to
    ``wait_s`` seconds until the run's final ``exit`` record is there; ``complete`` says whether
    it was.
    """
    deadline = time.monotonic() + wait_s
    while True:
        out = _read_offline_run_once(Path(run_dir))
        if out.complete or time.monotonic() >= deadline:
            return out
        time.sleep(0.05)


def _read_offline_run_once(run_dir: Path) -> OfflineRun:
    """One pass of :func:`read_offline_run` over the file as it is now."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")

    def key_of(item: Any) -> str:
        return item.key or "/".join(item.nested_key)

    def decode(text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            return text

    out = OfflineRun("", "", "", "", {}, [], {}, [], False)
    for raw in _records(files[0]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out.run_id, out.name, out.group, out.job_type = (
                r.run_id,
                r.display_name,
                r.run_group,
                r.job_type,
            )
            out.tags = list(r.tags)
            out.config.update({key_of(u): decode(u.value_json) for u in r.config.update})
        elif kind == "config":
            out.config.update({key_of(u): decode(u.value_json) for u in rec.config.update})
        elif kind == "history":
            out.history.append({key_of(i): decode(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            out.summary.update(
                {key_of(u): decode(u.value_json) for u in rec.summary.update if key_of(u)}
            )
        elif kind == "exit":
            out.complete = True
            out.exit_code = rec.exit.exit_code
    out.config.pop("_wandb", None)
    return out


def offline_runs(root: Path) -> list[Path]:
    """The offline run directories W&B wrote under a benchmark run directory."""
    return sorted((Path(root) / "wandb").glob("offline-run-*"))


def read_all(root: Path, wait_s: float = 10.0) -> list[OfflineRun]:
    """Every offline run under ``root``, decoded."""
    return [read_offline_run(d, wait_s) for d in offline_runs(root)]
