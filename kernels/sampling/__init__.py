"""Sampling kernels: the greedy argmax."""
