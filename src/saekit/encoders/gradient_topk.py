"""g-SAE (Olmo et al. 2024, "Features that Make a Difference"): TopK whose *choice* of latents also
weighs each latent's effect on the model's loss, s = z ⊙ (1 + β |W_dec ĝ|) (saekit.gradient_selection)."""

from __future__ import annotations

from saekit.encoders.topk import TopKSAE
from saekit.gradient_selection import gradient_aware
from saekit.sae import register

GradientTopKSAE = register(gradient_aware(TopKSAE, "gradient_topk", "GradientTopKParams"))
GradientTopKParams = GradientTopKSAE.Params
