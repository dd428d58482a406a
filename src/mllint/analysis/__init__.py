"""Shared semantic analysis: names, signatures, receiver kinds and data flow, computed once per
module and asked for by every rule."""
