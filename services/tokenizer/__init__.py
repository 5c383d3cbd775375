"""The public front door: chat templates, tokenization, validation, incremental detokenization."""
