"""Code shared by all three services: generated protobuf, gRPC plumbing, the step contract."""
