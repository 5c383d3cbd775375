"""Compute kernels. Each has a pure-torch reference (also the CPU path) and, where it pays, a Triton
implementation checked against it. Imported only by the worker's layers."""
