"""Numerics every method shares: pure PyTorch, no Lightning or Hydra."""
