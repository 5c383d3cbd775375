"""Sluice: an LLM inference server split into three gRPC services (tokenizer, scheduler, worker)."""

__version__ = "0.1.0"
