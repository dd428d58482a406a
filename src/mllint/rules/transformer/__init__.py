"""3xx: wiring of torch.nn.Transformer and its parts."""
