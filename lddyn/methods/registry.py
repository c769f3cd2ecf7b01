"""The method registry (kept apart from the package __init__ to avoid import cycles)."""

from lddyn.registry import Registry

METHODS: Registry = Registry("method")
