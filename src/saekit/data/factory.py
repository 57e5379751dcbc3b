"""Build the activation source a DataConfig names (imports the heavy ones lazily)."""

from __future__ import annotations

from saekit.config import DataConfig
from saekit.data.source import ActivationSource
from saekit.errors import SaekitError


def make_source(cfg: DataConfig, split: str = "train") -> ActivationSource:
    """The source for ``split`` ('train' or 'eval')."""
    if cfg.source == "synthetic":
        from saekit.data.synthetic import SyntheticSource

        return SyntheticSource(cfg.synthetic, split=split)
    if cfg.source == "store":
        if not cfg.store:
            raise SaekitError("data.source=store needs data.store (a folder written by `saekit cache`)")
        from saekit.data.store import open_store_source

        return open_store_source(cfg.store, split=split, seed=cfg.store_seed)
    if cfg.source == "lm":
        from saekit.data.lm_source import open_lm_source

        return open_lm_source(cfg.lm, split=split)
    if cfg.source == "array":
        from saekit.data.arrays import open_array_source

        return open_array_source(cfg.array, split=split, seed=cfg.store_seed)
    if cfg.source == "custom":
        raise SaekitError(f"this run trained on a custom Python source ({cfg.description or 'unnamed'}), which "
                          "cannot be rebuilt from its config: pass --data.* (e.g. --data.source array "
                          "--data.array.path FILE.npy) to say what to read")
    raise SaekitError(f"unknown data.source {cfg.source!r}")
