"""Local training (modes C and CDP), the shared training loop and evaluation metrics."""
