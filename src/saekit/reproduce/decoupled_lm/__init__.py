"""`saekit reproduce decoupled-lm`: the amortisation gap on real activations (O'Neill, Gumran & Klindt 2024,
arXiv 2411.13117), on the frozen dictionary of a trained Gated SAE.

The dictionary (W_dec, b_dec) of one SAE is frozen and codes for it come from
- ``sae``: the SAE's own amortised encoder (a JumpReLU, since the SAE is Gated);
- ``sae+refit``: the SAE's support, magnitudes re-solved by non-negative least squares (λ = 0);
- ``mp`` / ``omp``: matching pursuit / orthogonal matching pursuit to a target L0 k;
- ``fista`` / ``fista+refit``: ITO, FISTA on the L1 objective from zero, and its support refit (debiased);
- ``sae+ito``: FISTA warm-started from the SAE's codes, with a capped number of iterations;
- ``mlp from sae``: an MLP ReLU(W2 ReLU(W1 x)) trained on the frozen dictionary (reconstruction + λ·L1) on
  the store's train split, started as exactly the SAE's linear part (``MLPEncoder.start_from_linear``),
  several seeds; ``mlp``: the same from random weights.

Plan (every step reused from WORK when already done):
1. the store and the SAE of the Gated reproduction (``gated.train_config``: same store, same run folder,
   so the cpu scale reuses the Gated reproduction's already-trained SAE);
2. the SAE's L0 on the *validation* contexts sets the targets (``l0_ratios`` x that L0); per method
   family, its hyperparameter (k, λ) is searched on validation to hit each target (``search`` /
   ``choose``); the MLP's λ by training at seed 0, then every seed at the chosen λ;
3. on the *test* contexts (disjoint), chunk by chunk: the activations are captured once, every method
   encodes them (FVU, L0, γ, FLOPs per context), and the methods at the SAE's own L0 are spliced into the
   model in one pass per chunk (shared clean / zero / mean runs) for loss recovered, ΔCE and KL;
4. paired bootstrap over test contexts for every interval and for each method's difference from the SAE
   encoder; t-intervals over the MLP seeds; a verdict per claim; README, CSV/JSON, plots.

Modules: ``config`` (scales, the frozen SAE's recipe), ``search`` (a hyperparameter for a target L0),
``methods`` (the encoders and iterative methods on the frozen dictionary, per-context sums), ``pipeline``
(the steps, cached under WORK), ``verdicts`` (intervals and verdicts), ``report`` (README, CSV/JSON, plots).
"""

from __future__ import annotations

from saekit.reproduce.decoupled_lm.config import SCALES, DecoupledLMScale
from saekit.reproduce.decoupled_lm.pipeline import reproduce

__all__ = ["SCALES", "DecoupledLMScale", "reproduce"]
