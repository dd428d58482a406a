"""1xx: tokenizers, labels and collators."""
