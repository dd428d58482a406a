"""Built-in rules, one module per rule, grouped by domain (found by the registry)."""
