"""Checkpoints in: sources, file readers, one module per family, GGUF, the native format, tokenizers."""
