"""Robustness: training methods for multi-exit models, attacks, and evaluation."""
