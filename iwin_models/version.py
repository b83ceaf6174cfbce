"""The package version (one place: setup.cfg reads it, the model cards and converted folders record it)."""
__version__ = "0.1.0"
