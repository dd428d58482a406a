"""5xx: Lightning."""
