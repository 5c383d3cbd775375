"""Model definitions, one module per family; `registry` maps HF architecture names to them."""
