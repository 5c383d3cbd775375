"""GPU model worker: weights, KV cache, model definitions, attention, sampling."""
