"""Matrix products: the one-row Triton GEMV beside cuBLAS."""
