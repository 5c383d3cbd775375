"""What every kernel shares at run time: backend choice, programmatic dependent launch, JIT watch."""
