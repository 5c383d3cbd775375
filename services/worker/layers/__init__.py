"""Building blocks shared by every model file: linear layers with weight loaders, norms, rotary, attention."""
