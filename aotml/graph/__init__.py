"""Graph IR: typed tensors and op nodes from the one registry, plus the passes over it."""
