"""saekit: sparse autoencoders and decoupled sparse inference on neural-network activations."""

from saekit.errors import SaekitError
from saekit.sae import SparseAutoencoder, available_architectures, build_sae, load

__all__ = ["SaekitError", "SparseAutoencoder", "available_architectures", "build_sae", "load"]
__version__ = "0.1.0"
