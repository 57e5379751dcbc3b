"""`saekit reproduce gsae`: g-SAE (gradient TopK) vs TopK at equal k (Olmo et al. 2024, arXiv 2411.10397).

The paper's three claims, tested on SmolLM2-135M's residual stream (the paper: GPT-2 small, layer 7):
1. at equal k a g-SAE's reconstruction, spliced into the model, costs less next-token loss than TopK's;
2. g-SAEs have fewer dead latents;
3. g-SAE latents are more effective steering vectors.

The g-SAE score is s = z ⊙ (1 + β |d_i · g|) (DESIGN.md), g = ∂CE/∂x at the hookpoint (next-token CE
summed over the context). Two β families are trained, because β has no meaning without g's units:
* ``norm``: saekit's normalised gradient ĝ = g / E‖g‖ (``grad_scale`` fitted by the trainer), so
  |d_i · ĝ| is O(1/√d) whatever the model;
* ``raw``: the paper's unnormalised g, in the model's own units. saekit trains it as a ``gradient_topk``
  SAE with β_saekit = β_raw · E‖g‖, where E‖g‖ is computed from exactly the sample the trainer fits
  ``grad_scale`` on: then β_saekit |d_i · ĝ| = β_raw |d_i · g| to float rounding (checked on every
  trained SAE from its cfg.json: β_raw = β / (input_scale · grad_scale)).

Plan (every step reused from WORK when already done):
1. one activation store with LM gradients (train split; the model is run once);
2. seed 0: TopK and a g-SAE per β of both families, per k (same width, steps, batch, lr, data order);
3. per (k, family) the β with the lowest spliced ΔCE on the *validation* contexts (with gradients at
   inference) is chosen; TopK and the chosen g-SAEs are trained at every further seed;
4. every chosen SAE is spliced into the model on the *test* contexts (disjoint from validation):
   g-SAEs with the clean LM gradient at inference (``WithGradients``) and bare (β = 0: TopK selection
   on the same weights), with per-context sums for the paired bootstrap; dead latents from the
   trainer's last window (>= 1M tokens at the cpu scale);
5. steering (``saekit steer-eval`` protocol) for TopK and the chosen g-SAEs at each k;
6. intervals (paired bootstrap over test contexts, t over seeds, bootstrap over latents), verdicts,
   README, CSV/JSON, plots.

Modules: ``config`` (the scales, the SAE recipes, β's units), ``pipeline`` (store, training, splicing,
steering, all cached under WORK), ``verdicts`` (β choice, intervals, verdicts, ``analyse``), ``report``
(README, CSV/JSON, plots).
"""

from __future__ import annotations

from saekit.reproduce.gsae.config import SCALES, GSAEScale, Variant, check
from saekit.reproduce.gsae.pipeline import reproduce

__all__ = ["SCALES", "GSAEScale", "Variant", "check", "reproduce"]
