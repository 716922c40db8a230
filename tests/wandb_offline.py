"""Reads what an offline W&B run recorded, straight from its `.wandb` file.

The file is a LevelDB log (https://github.com/google/leveldb/blob/main/doc/log_format.md):
a 7-byte header (":W&B", magic, version), then 32 KiB blocks of records, each
crc32 (4) + length (2) + type (1) + data, where data is a serialized
`wandb_internal_pb2.Record`. Records longer than a block are split FIRST/MIDDLE/LAST.
"""

from __future__ import annotations

import glob
import json
import os
import struct
import time
import zlib
from dataclasses import dataclass, field

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str):
    data = open(path, "rb").read()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer: padding
            pos += left
            continue
        crc, length, rtype = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        if rtype == 0 and length == 0:
            break
        assert zlib.crc32(bytes([rtype]) + chunk) & 0xFFFFFFFF == crc, "corrupt record"
        pos += HEADER + length
        if rtype == FULL:
            payload = chunk
        elif rtype == FIRST:
            pending = chunk
            continue
        elif rtype == MIDDLE:
            pending += chunk
            continue
        else:
            payload, pending = pending + chunk, b""
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(payload)
        yield rec


def _put(target: dict, item) -> None:
    """Store an item; dict values (images) arrive flattened into nested keys."""
    keys = list(item.nested_key) or [item.key]
    for k in keys[:-1]:
        target = target.setdefault(k, {})
    target[keys[-1]] = json.loads(item.value_json)


@dataclass
class OfflineRun:
    dir: str
    run_id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None

    @property
    def finished(self) -> bool:
        return self.exit_code is not None

    def media(self, relpath: str) -> str:
        return os.path.join(self.dir, "files", relpath)


def read_run(run_dir: str, wait_s: float = 60.0) -> OfflineRun:
    """The run as its file holds it. W&B's service process may still be writing the file when
    `run.finish()` has returned: read it again until it holds the exit record, for at most `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            run = _read_run(run_dir)
        except AssertionError:  # a record half written
            if time.monotonic() > deadline:
                raise
        else:
            if run.finished or time.monotonic() > deadline:
                return run
        time.sleep(0.2)


def _read_run(run_dir: str) -> OfflineRun:
    (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    run = OfflineRun(dir=run_dir)
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.run_id, run.name, run.group, run.job_type = r.run_id, r.display_name, r.run_group, r.job_type
            for item in r.config.update:
                _put(run.config, item)
        elif kind == "config":
            for item in rec.config.update:
                _put(run.config, item)
        elif kind == "history":
            row: dict = {}
            for item in rec.history.item:
                _put(row, item)
            run.history.append(row)
        elif kind == "summary":
            for item in rec.summary.update:
                _put(run.summary, item)
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
    return run


def find_runs(root: str) -> list[OfflineRun]:
    """All offline runs under `root`, in directory order."""
    dirs = sorted(glob.glob(os.path.join(root, "**", "offline-run-*"), recursive=True))
    return [read_run(d) for d in dirs if os.path.isdir(d)]
