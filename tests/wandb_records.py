"""Read back what an offline W&B run wrote: the records of its run-*.wandb file (LevelDB log format)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7  # log blocks; the file opens with ":W&B", a 2-byte magic and a version byte


def records(path: Path):
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _items(updates) -> dict:
    """Key-value updates as a dict; nested keys (a media or table value) become nested dicts."""
    out: dict = {}
    for update in updates:
        keys = [update.key] if update.key else list(update.nested_key)
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = json.loads(update.value_json)
    return out


def offline_run(run_dir: Path) -> dict:
    """The run record, the config and summary (last value per key) and the history rows of run_dir's W&B run."""
    (file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    run, config, summary, history, alerts = None, {}, {}, [], []
    for record in records(file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "config":
            config.update(_items(record.config.update))
        elif kind == "summary":
            summary.update(_items(record.summary.update))
        elif kind == "history":
            history.append(_items(record.history.item))
        elif kind == "alert":
            alerts.append(record.alert)
    return {"run": run, "config": config, "summary": summary, "history": history, "alerts": alerts,
            "files": file.parent / "files"}
