"""Decoupled sparse inference (O'Neill, Gumran & Klindt 2024): codes for a frozen dictionary from
iterative solvers (ISTA/FISTA), greedy pursuit, MLP encoders or sparse coding, with FLOP counts.

The dictionary convention is saekit's: W_dec [n_atoms, d] (rows are atoms), b_dec [d], x̂ = f W_dec + b_dec.
"""

from saekit.inference.iterative import InferenceResult, fista, ista, lipschitz, objective
from saekit.inference.pursuit import gradient_pursuit, matching_pursuit, orthogonal_matching_pursuit

__all__ = ["InferenceResult", "fista", "gradient_pursuit", "ista", "lipschitz", "matching_pursuit", "objective",
           "orthogonal_matching_pursuit"]
