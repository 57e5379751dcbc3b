"""BatchTopK SAE (Bussmann et al. 2024): in training keep the k·B largest ReLU pre-activations of the
whole batch (so a token may use more or fewer than k latents), loss NMSE + AuxK as TopK; at inference
one global threshold θ, estimated during training, makes codes per-token and batch-independent:
f = z ⊙ H(z − θ), i.e. a JumpReLU with θ for every latent (``to_jumprelu``).

During training θ is an exponential moving average (decay ``threshold_decay``; the first batch sets it)
of each training batch's smallest positive selected pre-activation, the batch's (k·B)-th largest. The
average lags the weights: in a short run, where the thresholds still fall, it ends too high (250 steps
on SmolLM2: θ 15% high, inference L0 30% below k). So when training ends the trainer calls
``calibrate`` with a sample of the training data, and θ moves between the sample's (k·n)-th and
(k·n+1)-th largest ReLU pre-activations under the final weights: at inference about k latents fire per token on data like the
training data. θ is a buffer of the module, saved with the weights (covered by cfg.json's weights_sha256).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from saekit.encoders.topk import TopKFamily, TopKParams
from saekit.errors import SaekitError
from saekit.gradient_selection import gradient_aware
from saekit.sae import register
from saekit.statement import Active, BatchTopK, Selection


@dataclass
class BatchTopKParams(TopKParams):
    threshold_decay: float = 0.99
    """Decay of the moving average that estimates the inference threshold θ (batchtopk, matryoshka)."""


@register
class BatchTopKSAE(TopKFamily):
    architecture = "batchtopk"
    summary = ("BatchTopK SAE: the batch keeps its k·B largest pre-activations in training, a global "
               "threshold at inference; NMSE + AuxK (Bussmann et al. 2024)")
    Params = BatchTopKParams

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.int64))

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)
        if not 0.0 <= cfg.threshold_decay < 1.0:
            raise SaekitError(f"sae.threshold_decay must lie in [0, 1), got {cfg.threshold_decay}")

    def selection(self, n_rows: int, like: Tensor) -> Selection:
        return BatchTopK(self.cfg.k * n_rows, n_rows, self.cfg.n_latents)

    def encode_scaled(self, x: Tensor, grad: Tensor | None = None) -> Tensor:
        """Per token: the global threshold (gradients only steer training's selection)."""
        z = self.pre_activations(x)
        return z * (z > self.threshold).to(z.dtype)

    def observe(self, a: Active, f: Tensor) -> None:
        if torch.is_grad_enabled():  # a training step (not an evaluation under no_grad)
            with torch.no_grad():
                self._update_threshold(f.detach())

    def _update_threshold(self, f: Tensor) -> None:
        positive = f[f > 0]
        stat = torch.stack([positive.min() if positive.numel() else f.new_zeros(()),
                            f.new_tensor(float(positive.numel() > 0))])
        if dist.is_available() and dist.is_initialized():  # the same θ on every replica
            dist.all_reduce(stat)
            if stat[1] > 0:
                stat[0] /= stat[1]
        if stat[1] == 0:
            return
        m = stat[0].to(self.threshold.dtype)
        if self.threshold_updates == 0:
            self.threshold.copy_(m)
        else:
            self.threshold.mul_(self.cfg.threshold_decay).add_((1 - self.cfg.threshold_decay) * m)
        self.threshold_updates += 1

    @torch.no_grad()
    def calibrate(self, x: Tensor) -> None:
        """θ from the final weights: midway between the (k·n)-th and (k·n+1)-th largest ReLU pre-activations
        of the n rows of ``x`` (model units), so that exactly k·n of them fire (k per row on average) and none
        sits at θ itself, where a recomputation's rounding (e.g. an export's folded weights) could flip it.
        Kept as is when the (k·n)-th is 0."""
        z = self.pre_activations(x.to(self.threshold.device, torch.float32) * self.cfg.input_scale).relu().flatten()
        n = self.cfg.k * x.shape[0]
        values = z.topk(min(n + 1, z.numel())).values
        kth = values[min(n, values.numel()) - 1]
        if kth <= 0:
            return
        after = values[n] if values.numel() > n else torch.zeros_like(kth)
        self.threshold.copy_((kth + after) / 2)

    @torch.no_grad()
    def to_jumprelu(self):
        """The JumpReLU SAE with θ = the global threshold for every latent: the same codes at inference."""
        from saekit.encoders.jumprelu import jumprelu_from

        return jumprelu_from(self, self.W_enc, self.b_enc, self.threshold.expand(self.cfg.n_latents))


GradientBatchTopKSAE = register(gradient_aware(BatchTopKSAE, "gradient_batchtopk"))
