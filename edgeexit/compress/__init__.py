"""Compression of multi-exit models that keeps robustness.

- :mod:`edgeexit.compress.prune`: structured channel pruning with torch-pruning (channels really
  removed; every exit head kept consistent with its stage).
- :mod:`edgeexit.compress.manifold`: a small 1-D convolutional VAE of the signal channels and the
  on-manifold (latent-space) adversarial attack.
- :mod:`edgeexit.compress.finetune`: fine-tuning of the compressed model (standard, adversarial,
  on-manifold adversarial).
- :mod:`edgeexit.compress.run`: the `edgeexit compress` job (prune, fine-tune, report).
"""
