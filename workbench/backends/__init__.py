"""Backends: the hooked decoder (native) and transformers traced with nnsight."""
