"""The hooked decoder: decoder, attention, MLP/MoE, positions, hook points, KV cache."""
