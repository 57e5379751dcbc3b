"""Run `saekit train` under torchrun (2 local processes, gloo) for the distributed tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from saekit.config import TrainConfig, dump_yaml


def torchrun_train(cfg: TrainConfig, workdir: Path, nproc: int = 2, timeout: int = 300,
                   extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N -m saekit train --config cfg.yaml [extra ...]``."""
    path = workdir / "train.yaml"
    path.write_text(dump_yaml(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHELASTIC_ERROR_FILE=str(workdir / "error.json"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "saekit", "train", "--config", str(path), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
