"""Worked extensions of nerve-jax, each chosen by a config string (docs/extending.md)."""
