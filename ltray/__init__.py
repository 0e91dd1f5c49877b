"""ltray: Ray-based self-supervised learning on long-tailed data."""

__version__ = "0.1.0"
