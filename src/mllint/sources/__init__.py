"""Source adapters: turn files into text for the pure core and write fixed text back."""
