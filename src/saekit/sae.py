"""SparseAutoencoder = an encoder family + the shared Dictionary; the architecture registry; save / load.

Adding an architecture means adding one module under ``saekit/encoders/`` that subclasses
``SparseAutoencoder`` and decorates it with ``@register``; its ``Params`` dataclass holds its
hyperparameters, which become fields of ``SAEConfig`` automatically.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.io import (atomic_save_tensors, atomic_write_json, check_finite_tensors, file_sha256, load_tensors,
                       read_json, verify_sha256)
from saekit.kernels import SparseCodes, chunk_rows
from saekit.rng import stream

if TYPE_CHECKING:
    from saekit.config import SAEConfig

_REGISTRY: dict[str, type["SparseAutoencoder"]] = {}


class LossOutput:
    """A training step's loss, its named terms (for logging), the codes and the reconstruction.

    The sparse kernels hand over their codes as ``SparseCodes``; ``codes`` builds the dense
    [batch, n_latents] matrix only when asked, while ``fired`` and ``l0`` (what the trainer reads
    every step) work on either form."""

    def __init__(self, loss: Tensor, terms: dict[str, Tensor], codes: Tensor | SparseCodes, x_hat: Tensor) -> None:
        self.loss, self.terms, self.x_hat = loss, terms, x_hat
        self._codes = codes

    @property
    def sparse(self) -> bool:
        """Whether the step ran on the sparse kernels (its codes came as SparseCodes)."""
        return isinstance(self._codes, SparseCodes)

    @property
    def codes(self) -> Tensor:
        if isinstance(self._codes, SparseCodes):
            self._codes = self._codes.to_dense()
        return self._codes

    @torch.no_grad()
    def fired(self) -> Tensor:
        """[n_latents] bool: the latents nonzero on at least one token of the batch."""
        if isinstance(self._codes, SparseCodes):
            return self._codes.fired()
        codes = self._codes.detach()
        fired = torch.zeros(codes.shape[-1], dtype=torch.bool, device=codes.device)
        for block in codes.split(chunk_rows(*codes.shape)):  # no batch-sized mask
            fired |= (block != 0).any(dim=0)
        return fired

    def l0(self) -> float:
        """Mean number of nonzero codes per token."""
        if isinstance(self._codes, SparseCodes):
            return self._codes.l0()
        return torch.count_nonzero(self._codes.detach()).item() / max(self._codes.shape[0], 1)


@dataclass
class NoParams:
    """An architecture without hyperparameters of its own."""


class SparseAutoencoder(nn.Module):
    """Base class: subclasses define the encoder, ``encode`` and ``loss``.

    All public methods take activations in model units; ``cfg.input_scale`` (set by the trainer
    so that E‖x‖² = d_in) is applied inside, so codes and losses live in normalised units.
    """

    architecture: ClassVar[str]
    summary: ClassVar[str] = ""
    """One line for `saekit train --help`: what the architecture is."""
    Params: ClassVar[type] = NoParams
    adam_betas: ClassVar[tuple[float, float]] = (0.9, 0.999)
    uses_sparsity_penalty: ClassVar[bool] = False  # L1-trained: λ warm-up and resampling apply
    needs_gradients: ClassVar[bool] = False
    fitted_fields: ClassVar[tuple[str, ...]] = ()  # Params fields the trainer estimates from the data (fit_to_sample)

    def __init__(self, cfg: "SAEConfig") -> None:
        super().__init__()
        self.cfg = cfg
        self.dictionary = Dictionary(cfg.n_latents, cfg.d_in)

    # ---- to be provided by each architecture -------------------------------------------
    def encode_scaled(self, x: Tensor, grad: Tensor | None = None) -> Tensor:
        """Codes f for inputs already multiplied by ``cfg.input_scale``."""
        raise NotImplementedError

    def loss(self, x: Tensor, *, sparsity_scale: float = 1.0, dead_mask: Tensor | None = None,
             grad: Tensor | None = None) -> LossOutput:
        """Training objective for a batch of model-unit activations."""
        raise NotImplementedError

    def encoder_weight(self) -> Tensor:
        """The [n_latents, d_in] matrix whose rows are each latent's encoder direction."""
        raise NotImplementedError

    @torch.no_grad()
    def reinit_latents(self, idx: Tensor, directions: Tensor, encoder_norm: float) -> None:
        """Point dead latents ``idx`` at unit ``directions`` (resampling); zero their biases."""
        raise NotImplementedError

    def latent_parameters(self) -> list[tuple[nn.Parameter, int]]:
        """(parameter, dim) pairs indexed by latent along ``dim``: their optimiser rows reset on resampling."""
        raise NotImplementedError

    @classmethod
    def validate(cls, cfg: "SAEConfig") -> None:
        """Raise SaekitError for impossible hyperparameters."""

    @classmethod
    def fit_to_sample(cls, cfg: "SAEConfig", acts: Tensor, grads: Tensor | None) -> "SAEConfig":
        """Set data-dependent hyperparameters from an initial sample (e.g. a gradient normaliser)."""
        return cfg

    def keeps_unit_norm(self) -> bool:
        """Whether training projects atoms to unit norm (and drops the parallel gradient)."""
        return True

    # ---- shared behaviour ---------------------------------------------------------------
    @property
    def W_dec(self) -> nn.Parameter:
        return self.dictionary.W_dec

    @property
    def b_dec(self) -> nn.Parameter:
        return self.dictionary.b_dec

    def encode(self, x: Tensor, grad: Tensor | None = None) -> Tensor:
        """Codes for model-unit activations x (and, for gradient-aware encoders, the LM gradient).

        Inference: no autograd graph is built unless ``x`` itself requires grad (training goes
        through ``loss``)."""
        self._check_input(x)
        if grad is not None:
            grad = grad / self.cfg.input_scale  # ∂L/∂(s·x) = (∂L/∂x) / s
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            return self.encode_scaled(x * self.cfg.input_scale, grad)

    def decode(self, f: Tensor) -> Tensor:
        """Reconstruction in model units (no autograd graph unless ``f`` requires grad)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and f.requires_grad):
            return self.dictionary.decode(f) / self.cfg.input_scale

    def forward(self, x: Tensor, grad: Tensor | None = None) -> tuple[Tensor, Tensor]:
        f = self.encode(x, grad)
        return self.decode(f), f

    def _check_input(self, x: Tensor) -> None:
        if x.shape[-1] != self.cfg.d_in:
            raise SaekitError(f"activations have width {x.shape[-1]} but the SAE expects d_in={self.cfg.d_in}")

    @torch.no_grad()
    def init_encoder_from_decoder(self) -> None:
        """Tied initialisation: each latent's encoder row starts as its atom (biases zero)."""
        self.reinit_latents(torch.arange(self.cfg.n_latents), self.W_dec.detach().clone(), 1.0)

    def save(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` and ``cfg.json`` (architecture + every hyperparameter), atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(directory / "model.safetensors", dict(self.state_dict()),
                            metadata={"architecture": self.architecture})
        digest = file_sha256(directory / "model.safetensors")
        atomic_write_json(directory / "cfg.json", {**self.cfg.to_dict(), WEIGHTS_SHA256: digest})


WEIGHTS_SHA256 = "weights_sha256"  # cfg.json key: sha256 of model.safetensors, verified by load


def register(cls: type[SparseAutoencoder]) -> type[SparseAutoencoder]:
    """Class decorator: make an architecture selectable by its ``architecture`` name."""
    name = cls.architecture
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"architecture {name!r} registered twice")
    _REGISTRY[name] = cls
    return cls


def _discover() -> None:
    import saekit.encoders as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"saekit.encoders.{mod.name}")


def architectures() -> dict[str, type[SparseAutoencoder]]:
    """All registered architectures, by name."""
    if not _REGISTRY:
        _discover()
    return dict(_REGISTRY)


def available_architectures() -> list[str]:
    return sorted(architectures())


def architecture_class(name: str) -> type[SparseAutoencoder]:
    archs = architectures()
    if name not in archs:
        raise SaekitError(f"unknown architecture {name!r}; choose one of {', '.join(sorted(archs))}")
    return archs[name]


def build_sae(cfg: "SAEConfig", seed: int = 0) -> SparseAutoencoder:
    """A freshly initialised SAE: random unit-norm atoms, tied encoder, zero biases."""
    cfg.validate()
    cls = architecture_class(cfg.architecture)
    sae = cls(cfg)
    sae.dictionary.reset_random(stream("sae.init", seed))  # never the stream of the data or the truth
    sae.init_encoder_from_decoder()
    return sae


def load(directory: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Rebuild an SAE saved by ``save``, or convert a SAELens or sparsify folder (never unpickles).

    A foreign SAE comes back with input_scale 1 and the same encode/decode as in its own library."""
    from saekit.config import SAEConfig
    from saekit.interop import detect_format, load_foreign

    directory = Path(directory)
    fmt = detect_format(directory)
    if fmt != "saekit":
        return load_foreign(directory, fmt).to(device)
    data = read_json(directory / "cfg.json")
    digest = data.pop(WEIGHTS_SHA256, None) if isinstance(data, dict) else None
    cfg = SAEConfig.from_saved(data, str(directory / "cfg.json"))
    sae = architecture_class(cfg.architecture)(cfg)
    state = load_tensors(directory / "model.safetensors")
    expected = dict(sae.state_dict())
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        raise SaekitError(f"{directory}/model.safetensors does not match cfg.json ({cfg.architecture}, "
                          f"d_in={cfg.d_in}, n_latents={cfg.n_latents})")
    if digest is not None:  # folders written before checksums were recorded have none to verify
        verify_sha256(directory / "model.safetensors", digest, "cfg.json")
    check_finite_tensors(state, str(directory / "model.safetensors"))
    sae.load_state_dict(state)
    return sae.to(device)


def params_fields(cls: type[SparseAutoencoder]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls.Params)]


def to_jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
