"""`saekit reproduce NAME [--scale smoke|cpu|gpu] [--out DIR] [--work DIR]`."""

from __future__ import annotations

import importlib
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from saekit import cliparse
from saekit.lock import output_lock
from saekit.reproduce import REPRODUCTIONS
from saekit.reproduce.common import Run

Name = Literal["gated", "gsae", "decoupled-synthetic", "decoupled-lm", "architectures"]
assert set(Name.__args__) == set(REPRODUCTIONS)  # type: ignore[attr-defined]


@dataclass
class ReproduceCommand:
    name: Annotated[Name, tyro.conf.Positional]
    """Which reproduction: gated (Gated vs standard), gsae (g-SAE vs TopK), decoupled-synthetic
    (O'Neill et al. synthetic benchmark), decoupled-lm (encoders and iterative inference on a frozen
    LM dictionary), architectures (TopK, BatchTopK, Matryoshka, JumpReLU beside Gated and standard)."""
    scale: Literal["smoke", "cpu", "gpu"] = "cpu"
    """smoke: the pipeline and its write-up end to end in seconds (not the science); cpu: sized for a
    working session on 2 CPU cores; gpu: >= 20M tokens on one GPU."""
    out: str = ""
    """Folder of the write-up (README.md, CSV/JSON, plots); default results/NAME, or WORK/results for smoke."""
    work: str = ""
    """Folder of stores, trained SAEs and cached evaluations (reused on a rerun); default runs/reproduce/NAME-SCALE."""


def _description() -> str:
    lines = ["Reproduce a paper's headline results; resumable (rerun the same command to continue).", ""]
    lines += [f"  {name:<20} {summary}" for name, (summary, _) in REPRODUCTIONS.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    cmd = cliparse.cli(ReproduceCommand, args=argv, prog="saekit reproduce", description=_description())
    module = importlib.import_module(f"saekit.reproduce.{REPRODUCTIONS[cmd.name][1]}")
    work = Path(cmd.work or f"runs/reproduce/{cmd.name}-{cmd.scale}")
    out = Path(cmd.out or (work / "results" if cmd.scale == "smoke" else f"results/{cmd.name}"))
    command = shlex.join(["saekit", "reproduce", *argv])
    run = Run(name=cmd.name, scale=cmd.scale, out=out, work=work, command=command)
    with output_lock(work, f"saekit reproduce {cmd.name}"), output_lock(out, f"saekit reproduce {cmd.name}"):
        module.reproduce(module.SCALES[cmd.scale], run)
