"""Optimizers of the LF objectives; importing the package registers the samplers too."""

from . import gibbs  # noqa: F401  (registers "gibbs")
