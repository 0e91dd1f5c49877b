"""Registered method components; importing this package registers them all."""

from ltray.methods.components import bcl, colt, focal, gh, lotar, mak, sdclr  # noqa: F401
