"""Rules about Hugging Face ``generate()`` (MLL2xx)."""
