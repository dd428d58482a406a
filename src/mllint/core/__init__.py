"""The engine: diagnostics, rules, registry, suppressions and fixes."""
