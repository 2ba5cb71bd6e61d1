"""Memory planning: KV cache, weights and workspace of a deployment, as an engine would plan them."""
