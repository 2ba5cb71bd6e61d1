"""The hooked decoder: decoder, attention, MLP/MoE, positions, hook points, KV cache, and the
TransformerLens-style library on it (text, running, activation_cache, weights_view, lens)."""
