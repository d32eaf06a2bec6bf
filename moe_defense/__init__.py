"""moe-defense: measure, harden and verify the routing safety of Mixture-of-Experts language models."""

__version__ = "0.1.0"
