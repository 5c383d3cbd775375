"""Elementwise and row-wise kernels: RMSNorm, rotary embedding, KV-cache writes, activations."""
