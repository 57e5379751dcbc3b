"""Optional W&B logging (--log.wandb-project): in wandb's offline mode the run's history equals metrics.jsonl."""

from __future__ import annotations

import json
import struct

import pytest
import torch

import saekit
from saekit.errors import SaekitError

SMALL = dict(architecture="topk", k=2, n_latents=16, steps=6, batch_size=64, log_every=2, init_samples=128,
             progress=False)


def read_records(path):
    """The records of a .wandb file: W&B's LevelDB-style log (a 7-byte ':W&B' header, then 32 KiB blocks of
    chunks with a 7-byte header each: crc32 (4), length (2), type (1: full, 2: first, 3: middle, 4: last))
    holding wandb_internal_pb2.Record messages. wandb 0.31 ships no Python reader for it."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, parts = 7, 32768, []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts.append(data[pos + 7:pos + 7 + n])
        pos += 7 + n
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(b"".join(parts))
            parts = []
            yield rec


def offline_history(run_dir):
    """The history rows (less W&B's own _step/_runtime/_timestamp) of the one offline run under run_dir/wandb."""
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    rows = []
    for rec in read_records(files[0]):
        if rec.WhichOneof("record_type") == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            rows.append({k: v for k, v in row.items() if not k.startswith("_")})
    return rows


def test_wandb_offline_rows_equal_metrics_jsonl(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    saekit.train(torch.randn(500, 8), out_dir=str(tmp_path / "run"), log={"wandb_project": "saekit-test",
                                                                           "wandb_mode": "offline"}, **SMALL)
    want = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    got = offline_history(tmp_path / "run")
    assert len(want) == 3 and got == want
    assert (tmp_path / "run" / "wandb_run_id").read_text().strip() in str(next((tmp_path / "run" / "wandb").glob("offline-run-*")))


def test_tracking_is_off_by_default_and_missing_wandb_is_one_line(tmp_path, monkeypatch):
    saekit.train(torch.randn(500, 8), out_dir=str(tmp_path / "plain"), **SMALL)
    assert not (tmp_path / "plain" / "wandb").exists()
    import builtins

    real = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("no wandb")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(SaekitError, match=r"saekit\[wandb\]"):
        saekit.train(torch.randn(500, 8), out_dir=str(tmp_path / "w"), log={"wandb_project": "p"}, **SMALL)
