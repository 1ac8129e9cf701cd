"""Decoding strategies on top of any model exposing `embed`, `decode_step` and caches."""

from .generate import generate

__all__ = ["generate"]
