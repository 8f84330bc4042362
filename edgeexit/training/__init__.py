"""The pieces of the training loop behind :func:`edgeexit.train.train`, one concern per module.

- :mod:`~edgeexit.training.loop`: the loop itself, as named steps (setup, epochs, evaluate,
  checkpoint), in the manner of nanoGPT's ``train.py``.
- :mod:`~edgeexit.training.data`: the validation split, class weights and the batch loader.
- :mod:`~edgeexit.training.augment`: the training-time augmentations (:class:`Augmentation`).
- :mod:`~edgeexit.training.evaluation`: every exit's logits and per-exit reports.
- :mod:`~edgeexit.training.batchnorm`: precise BatchNorm statistics.
- :mod:`~edgeexit.training.distributed`: rank, world size and device under ``torchrun`` (NCCL on
  GPUs, gloo on CPUs; one machine or several).

The configuration (:class:`edgeexit.train.TrainConfig`) and the entry point (``train``) stay in
:mod:`edgeexit.train`; ``run_training`` (training with an optional CV epoch choice) is in
:mod:`edgeexit.cv`.
"""
