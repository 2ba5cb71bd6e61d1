"""The pipeline: checkpoint + profile -> probes -> records -> findings -> report document."""
