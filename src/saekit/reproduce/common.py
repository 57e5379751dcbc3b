"""What every reproduction shares: its folders, resumable steps, stores, verdicts and the write-up."""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from saekit.errors import SaekitError
from saekit.io import atomic_write_json, atomic_write_text

Verdict = Literal["reproduced", "not reproduced", "undecided at this power"]


@dataclass
class Run:
    """One invocation: where its write-up goes (``out``), where its reusable work lives (``work``)."""

    name: str
    scale: str
    out: Path
    work: Path
    command: str

    def __post_init__(self) -> None:
        self.out, self.work = Path(self.out), Path(self.work)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.started = time.time()

    def log(self, message: str) -> None:
        print(f"[reproduce {self.name} {self.scale}] {message}", flush=True)


def cached_json(path: Path, compute: Callable[[], Any]) -> Any:
    """The JSON at ``path`` if a previous run wrote it, else ``compute()`` written atomically.

    Every evaluation step of a reproduction goes through this, so a killed run redoes at most the
    step it was in."""
    path = Path(path)
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            pass  # atomic writes make this unlikely; recompute rather than fail
    value = compute()
    from saekit.eval.splice import clean_json

    atomic_write_json(path, clean_json(value))
    return json.loads(path.read_text())


def log_l0(l0: float) -> float:
    """log L0, with L0 = 0 mapped far below every real L0 (so it is never near a target, and no error)."""
    return math.log(max(float(l0), 1e-6))


def choose(points: dict[float, float], target: float) -> float:
    """The parameter whose (validation) L0 is nearest ``target`` on a log scale; ties go to the smaller one."""
    if not points:
        raise SaekitError("no evaluated points to choose from")
    return min(points, key=lambda p: (abs(log_l0(points[p]) - math.log(target)), p))


def train_or_resume(cfg: Any, source: Any = None) -> Any:
    """The SAE trained by ``cfg``: loaded when ``OUT/sae`` is complete, resumed from its newest
    checkpoint when one exists, trained from scratch otherwise."""
    from saekit.sae import load
    from saekit.train.checkpoint import latest_checkpoint
    from saekit.train.trainer import train

    out = Path(cfg.out_dir)
    if (out / "sae" / "cfg.json").is_file() and (out / "sae" / "model.safetensors").is_file():
        return load(out / "sae", device=cfg.device)
    return train(cfg, source=source, resume=latest_checkpoint(out) is not None)


def final_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The last row of a run's metrics.jsonl (its dead fraction is over the trainer's token window)."""
    path = Path(run_dir) / "metrics.jsonl"
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []
    if not lines:
        raise SaekitError(f"{path} holds no metrics")
    return json.loads(lines[-1])


def ensure_store(lm: Any, path: Path, split: str, max_tokens: int, fp16: bool, shard_tokens: int = 32768,
                 model: Any = None, tokenizer: Any = None) -> Path:
    """The activation store at ``path`` for ``split``, harvested (or finished) when not complete.

    ``model``/``tokenizer`` avoid loading the model again (a reproduction loads it once)."""
    from saekit.data.cache_command import CacheConfig, cache

    cache(CacheConfig(lm=lm, out=str(path), split=split, max_tokens=max_tokens, fp16=fp16,
                      shard_tokens=shard_tokens, progress=False), model, tokenizer)
    return Path(path)


def store_tokens(store: Path, split: str) -> int:
    """Tokens in one split of an activation store (from its manifest)."""
    from saekit.data.store import read_manifest, store_split_path

    return int(read_manifest(store_split_path(store, split))["total_tokens"])


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Path:
    cols = list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in cols})
    atomic_write_text(path, buf.getvalue())
    return path


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_ci(ci: dict[str, float] | None, digits: int = 3, key: str = "value") -> str:
    """'v [lo, hi]' from a dict with value (or mean), lo and hi."""
    if not ci:
        return "–"
    v = ci.get(key, ci.get("mean"))
    if ci.get("lo") is None or not math.isfinite(ci.get("lo", math.nan)):
        return fmt(v, digits)
    return f"{fmt(v, digits)} [{fmt(ci['lo'], digits)}, {fmt(ci['hi'], digits)}]"


def markdown_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


@dataclass
class Claim:
    claim: str
    paper: str
    ours: str
    verdict: Verdict
    why: str = ""


def claims_table(claims: Sequence[Claim]) -> str:
    return markdown_table([(c.claim, c.paper, c.ours, f"**{c.verdict}**", c.why) for c in claims],
                          ["claim", "paper", "saekit (this run)", "verdict", "why"])


def machine_line(run: Run) -> str:
    threads = torch.get_num_threads()
    minutes = (time.time() - run.started) / 60
    return (f"Machine: {platform.machine()}, {threads} torch threads, "
            f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; "
            f"this invocation took {minutes:.1f} min (work reused from earlier invocations is not counted).")


def write_readme(run: Run, title: str, sections: Sequence[str], config: Any = None) -> Path:
    """OUT/README.md: title, the exact command, the sections, and the full config of the scale."""
    parts = [f"# {title}", "",
             f"Written by `{run.command}` (scale `{run.scale}`). Rerunning the command reuses everything "
             f"already computed under `{run.work}` and rewrites this page.", "", machine_line(run), ""]
    if run.scale == "smoke":
        parts += ["**Smoke scale: this checks that the pipeline and the write-up work end to end. "
                  "None of its numbers is evidence for or against the paper.**", ""]
    parts += [s.rstrip() + "\n" for s in sections]
    if config is not None:
        data = asdict(config) if is_dataclass(config) else config
        parts += ["## Configuration of this scale", "", "```json", json.dumps(data, indent=1, default=str), "```", ""]
    path = run.out / "README.md"
    atomic_write_text(path, "\n".join(parts))
    run.log(f"wrote {path}")
    return path


def held_out_split(tokenizer: Any, lm: Any, n_validation: int, n_test: int) -> tuple[list[Any], list[Any]]:
    """Validation and test contexts: the first ``n_validation`` contexts of the corpus's eval split, then
    the next ``n_test``. Choices (λ, β) are made on validation; every reported number is on test."""
    from saekit.eval.splice import check_contexts, held_out_contexts

    ctxs = held_out_contexts(tokenizer, lm.corpus, lm.text_column, lm.context_length, lm.eval_fraction,
                             n_validation + n_test)
    val, test = ctxs[:n_validation], ctxs[n_validation:]
    if len(test) < n_test:
        raise SaekitError(f"the eval split holds {len(ctxs)} contexts; {n_validation} validation + {n_test} test "
                          "were asked for")
    check_contexts(test, lm.context_length)
    return val, test


def validation_tokens(cfg_validation_contexts: int, context_length: int) -> int:
    """Activation vectors of the first validation contexts in a store's eval split (BOS excluded)."""
    return cfg_validation_contexts * (context_length - 1)
