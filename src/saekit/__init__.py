"""saekit: sparse autoencoders and decoupled sparse inference on neural-network activations."""

from saekit.errors import SaekitError
from saekit.sae import SparseAutoencoder, available_architectures, build_sae, load
from saekit import train  # a callable package: saekit.train(acts, ...) trains on your own activations

__all__ = ["SaekitError", "SparseAutoencoder", "available_architectures", "build_sae", "load", "train"]
__version__ = "0.1.0"
