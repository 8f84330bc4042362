"""The device-side runtime: numpy plus an inference engine only; never torch, never onnx.

A test imports this package in a fresh interpreter and asserts that torch was not loaded.
"""
