"""Optional experiment tracking: the rows of metrics.jsonl, also sent to Weights & Biases.

Off unless ``log.wandb_project`` is set. The W&B run id is kept in ``OUT/wandb_run_id`` so that a run
continued with --resume logs into the same W&B run; W&B's own files go under ``OUT/wandb/``. wandb is
an optional extra (``pip install 'saekit[wandb]'``); asking for it without it installed is a one-line
error before training starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saekit.errors import SaekitError
from saekit.io import atomic_write_text

RUN_ID_FILE = "wandb_run_id"


def new_run_id() -> str:
    """A W&B-style run id: 8 random lowercase letters and digits."""
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class WandbTracker:
    def __init__(self, cfg: Any, out: Path, resume: bool) -> None:
        try:
            import wandb
        except ImportError:
            raise SaekitError("log.wandb_project is set but wandb is not installed: pip install 'saekit[wandb]' "
                              "(or leave --log.wandb-project empty)") from None
        log = cfg.log
        id_file = out / RUN_ID_FILE
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else new_run_id()
        atomic_write_text(id_file, run_id + "\n")
        try:
            self.run = wandb.init(project=log.wandb_project, entity=log.wandb_entity or None,
                                  name=log.wandb_run_name or out.name, id=run_id, resume="allow", dir=str(out),
                                  config=cfg.to_dict(), mode=log.wandb_mode or None, reinit="finish_previous")
        except Exception as e:  # wandb raises its own types (no login, no network, bad project)
            raise SaekitError(f"wandb.init failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    def log(self, row: dict[str, Any]) -> None:
        self.run.log(row, step=int(row["step"]))

    def finish(self) -> None:
        self.run.finish()
