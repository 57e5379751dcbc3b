"""Any saekit SAE as SAEBench's ``BaseSAE``, so SAEBench's evals run on it.

SAEBench (sae_bench 0.6, ``custom_saes/base_sae.py``) asks a custom SAE for: ``W_enc`` [d_in, d_sae],
``W_dec`` [d_sae, d_in], ``b_enc`` [d_sae], ``b_dec`` [d_in] as parameters; ``device`` and ``dtype``
attributes; ``encode(x)``, ``decode(f)``, ``forward(x)`` (the reconstruction) over any leading batch
dimensions; ``to(...)`` that keeps ``device``/``dtype`` current; ``check_decoder_norms()``; and a ``cfg``
with the fields of its ``CustomSAEConfig`` (model_name, d_in, d_sae, hook_layer, hook_name,
context_size, architecture, dtype, ... and ``to_dict()``). Its evals use these by duck typing (no
isinstance checks), and ``load_and_format_sae`` adds ``architecture_str`` and ``metadata`` to the cfg.

The adapter holds the SAE's model-unit weights (input_scale folded in, as in every export) and
computes the same codes as saekit: relu, topk, gated (``b_enc`` is then the gate bias, with ``b_mag``,
``r_mag`` beside it, as SAEBench's GatedSAE has) and gradient_topk (SAEBench passes no LM gradients,
so it encodes as TopK: the g-SAE's inference with β = 0). This module imports only torch, so it can
be loaded by file path inside SAEBench's own environment.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

# The thresholded architectures (codes z ⊙ H(z − θ)): the same tuple as ``saekit.interop.weights.THRESHOLDED``
# (a test keeps the two equal), written out because this file must import nothing of saekit (see above).
THRESHOLDED = ("jumprelu", "batchtopk", "matryoshka", "gradient_batchtopk", "gradient_matryoshka")


@dataclass
class SAEBenchConfig:
    """The fields of SAEBench's CustomSAEConfig (same names and defaults), filled from the saekit SAE."""

    model_name: str
    d_in: int
    d_sae: int
    hook_layer: int
    hook_name: str
    context_size: int | None = None
    hook_head_index: int | None = None
    architecture: str = ""
    apply_b_dec_to_input: bool = True
    finetuning_scaling_factor: bool = False
    activation_fn_str: str = ""
    activation_fn_kwargs: dict[str, Any] = field(default_factory=dict)
    prepend_bos: bool = True
    normalize_activations: str = "none"
    dtype: str = "float32"
    device: str = "cpu"
    model_from_pretrained_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset_path: str = ""
    dataset_trust_remote_code: bool = True
    seqpos_slice: tuple = (None,)
    training_tokens: int = -100_000
    sae_lens_training_version: str | None = None
    neuronpedia_id: str | None = None
    saekit_architecture: str = ""
    """The saekit architecture behind the adapter (gradient_topk shows as topk in ``architecture``)."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("metadata", None)  # added by SAEBench's standardisation; not serialisable
        return out


ACTIVATION = {"relu": "relu", "topk": "topk", "gradient_topk": "topk", "gated": "relu",
              **{a: "jumprelu" for a in THRESHOLDED}}
"""The JumpReLU family goes in as JumpReLU with its per-latent threshold (BatchTopK and Matryoshka: their
global inference threshold in every latent, as the SAELens export does; gradient-free inference)."""
ARCHITECTURE = {"relu": "standard", "topk": "topk", "gradient_topk": "topk", "gated": "gated",
                **{a: "jumprelu" for a in ACTIVATION if ACTIVATION[a] == "jumprelu"}}


class SAEBenchSAE(nn.Module):
    """A saekit SAE with SAEBench's BaseSAE interface (model-unit weights, input_scale folded in)."""

    def __init__(self, tensors: dict[str, Tensor], cfg: SAEBenchConfig, k: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        arch = cfg.saekit_architecture
        if arch not in ACTIVATION:
            raise ValueError(f"no SAEBench adapter for saekit architecture {arch!r}")
        self.cfg = cfg
        self.k = k
        self.W_enc = nn.Parameter(tensors["W_enc"].clone())  # [d_in, d_sae]
        self.W_dec = nn.Parameter(tensors["W_dec"].clone())  # [d_sae, d_in]
        self.b_enc = nn.Parameter(tensors["b_enc"].clone())  # gated: the gate bias
        self.b_dec = nn.Parameter(tensors["b_dec"].clone())
        if arch == "gated":
            self.r_mag = nn.Parameter(tensors["r_mag"].clone())
            self.b_mag = nn.Parameter(tensors["b_mag"].clone())
        if ACTIVATION[arch] == "jumprelu":
            self.threshold = nn.Parameter(tensors["threshold"].clone())  # [d_sae], in code units
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.to(device=torch.device(device), dtype=dtype)

    @classmethod
    def from_saekit(cls, sae: Any, model_name: str = "", hook_layer: int | None = None, hook_name: str | None = None,
                    context_size: int | None = None, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> "SAEBenchSAE":
        """The adapter for a saekit SAE. SAEBench needs the model and hookpoint it was trained on:
        ``hook_name`` in TransformerLens naming (default ``blocks.{hook_layer}.hook_resid_post``)."""
        from saekit.errors import SaekitError
        from saekit.interop.weights import fold

        if sae.cfg.architecture not in ACTIVATION:  # before fold, which takes more architectures than this adapter
            raise SaekitError(f"no SAEBench adapter for saekit's {sae.cfg.architecture!r} yet (supported: "
                              f"{', '.join(ACTIVATION)})")
        f = fold(sae)
        layer = 0 if hook_layer is None else hook_layer
        tensors = {"W_enc": f.W_enc.T.contiguous(), "W_dec": f.W_dec, "b_dec": f.b_dec,
                   "b_enc": f.b_gate if f.b_gate is not None else f.b_enc}
        if f.architecture == "gated":
            tensors.update(r_mag=f.r_mag, b_mag=f.b_mag)
        if f.threshold is not None:
            tensors["threshold"] = f.threshold.reshape(-1).expand(f.n_latents).contiguous()
        cfg = SAEBenchConfig(model_name=model_name, d_in=f.d_in, d_sae=f.n_latents, hook_layer=layer,
                             hook_name=hook_name or f"blocks.{layer}.hook_resid_post", context_size=context_size,
                             architecture=ARCHITECTURE[f.architecture], activation_fn_str=ACTIVATION[f.architecture],
                             activation_fn_kwargs={"k": f.k} if f.k is not None else {},
                             saekit_architecture=f.architecture)
        return cls(tensors, cfg, k=f.k, device=device, dtype=dtype)

    # ---- BaseSAE's interface -------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        x = x.to(self.dtype)
        proj = (x - self.b_dec) @ self.W_enc  # [..., d_sae]
        arch = self.cfg.saekit_architecture
        if arch == "gated":
            gate = (proj + self.b_enc) > 0
            return gate.to(proj.dtype) * (proj * self.r_mag.exp() + self.b_mag).relu()
        z = proj + self.b_enc
        if arch == "relu":
            return z.relu()
        if ACTIVATION[arch] == "jumprelu":  # f = z ⊙ H(z − θ), θ > 0 (saekit's, as SAELens's JumpReLU)
            return z * (z > self.threshold).to(z.dtype)
        values, idx = z.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(z).scatter_(-1, idx, values.relu())

    def decode(self, feature_acts: Tensor) -> Tensor:
        return feature_acts.to(self.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def to(self, *args: Any, **kwargs: Any) -> "SAEBenchSAE":
        """nn.Module.to that keeps ``device``, ``dtype`` and ``cfg.dtype``/``cfg.device`` current."""
        super().to(*args, **kwargs)
        p = self.W_enc
        self.device, self.dtype = p.device, p.dtype
        self.cfg.dtype = str(p.dtype).split(".")[1]
        self.cfg.device = str(p.device)
        return self

    @torch.no_grad()
    def check_decoder_norms(self) -> bool:
        """Whether every atom has unit norm (SAEBench's check; an SAE whose input_scale is not 1 has atoms
        of norm 1/input_scale in model units, which SAEBench reports and accepts)."""
        norms = self.W_dec.norm(dim=1)
        tol = 1e-2 if self.W_dec.dtype in (torch.bfloat16, torch.float16) else 1e-5
        return bool(torch.allclose(norms, torch.ones_like(norms), atol=tol))


def as_saebench(sae: Any, model_name: str = "", hook_layer: int | None = None, hook_name: str | None = None,
                **kwargs: Any) -> SAEBenchSAE:
    """``SAEBenchSAE.from_saekit``: present ``sae`` (a saekit SAE, or a folder saekit.load reads) to SAEBench."""
    if not isinstance(sae, nn.Module):
        from saekit.sae import load

        sae = load(sae)
    return SAEBenchSAE.from_saekit(sae, model_name, hook_layer, hook_name, **kwargs)
