"""Training data: sharp textures, realistic degradation and an on-the-fly dataset with fixed eval sets."""

from livepsf.data import textures

__all__ = ["textures"]
