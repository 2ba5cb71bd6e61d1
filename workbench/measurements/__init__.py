"""Experiments that run forwards: the length sweep, timing, FLOPs."""
