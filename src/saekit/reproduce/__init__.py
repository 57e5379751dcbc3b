"""Paper reproductions: ``saekit reproduce NAME --scale smoke|cpu|gpu``.

One module per reproduction; each holds one typed config per scale (``SCALES``) and a
``reproduce(cfg, run)`` that is resumable: stores, trained SAEs and evaluations already on disk
under the work folder are reused, so a killed reproduction continues where it stopped. Each writes
OUT/README.md (what was run, the exact command, the paper's figure beside ours, a verdict per
claim), CSV/JSON and plots. The shared machinery is in ``common``.
"""

from __future__ import annotations

# name -> (one line, module under saekit.reproduce)
REPRODUCTIONS: dict[str, tuple[str, str]] = {
    "gated": ("Gated SAE vs standard ReLU SAE (Rajamanoharan et al. 2024): L0 and γ at matched loss recovered",
              "gated"),
    "gsae": ("g-SAE vs TopK (Olmo et al. 2024): splicing with/without gradients, dead latents, steering", "gsae"),
    "decoupled-synthetic": ("O'Neill et al. 2024 synthetic benchmark: encoders vs iterative inference, "
                            "known/unknown codes and dictionary, N x M x K grid", "decoupled_synthetic"),
    "decoupled-lm": ("O'Neill et al. 2024 on a frozen LM dictionary: amortisation gap of SAE/MLP encoders vs "
                     "MP/OMP, FISTA+refit, SAE+ITO, with FLOPs", "decoupled_lm"),
    "architectures": ("TopK, BatchTopK, Matryoshka, JumpReLU beside Gated and standard: synthetic recovery "
                      "and the LM frontier on the Gated store, with seeds", "architectures"),
}
