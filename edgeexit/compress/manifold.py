"""The VAE and the on-manifold attack under their former name (compression reports and the
``onmanifold`` fine-tuning use both).

The VAE lives in :mod:`edgeexit.models.vae`, the attack in :mod:`edgeexit.robust.attacks.latent`:
robust training and evaluation use them without importing compression.
"""

from edgeexit.models.vae import (
    VAE_FORMAT,
    VAE_VERSION,
    SignalVAE,
    VAEConfig,
    check_vae_fits,
    label_preserved,
    latent_predict,
    load_vae,
    save_vae,
    train_vae,
)
from edgeexit.robust.attacks.latent import MODES, LatentPGD, onmanifold_accuracy

__all__ = [
    "MODES",
    "VAE_FORMAT",
    "VAE_VERSION",
    "LatentPGD",
    "SignalVAE",
    "VAEConfig",
    "check_vae_fits",
    "label_preserved",
    "latent_predict",
    "load_vae",
    "onmanifold_accuracy",
    "save_vae",
    "train_vae",
]
