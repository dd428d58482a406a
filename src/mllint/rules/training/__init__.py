"""4xx: the PyTorch training loop."""
