"""6xx: transformers API migrations, gated by the target version."""
