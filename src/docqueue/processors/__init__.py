"""Processors: the operations docqueue runs, and the registry that finds them by name."""

from __future__ import annotations

from docqueue.processors import ingest
from docqueue.processors.context import Context
from docqueue.processors.noop import NOOP
from docqueue.processors.registry import Processor, Registry, Resource, Resources

__all__ = ["Context", "Processor", "Registry", "Resource", "Resources", "builtin_registry"]


def builtin_registry(modules: list[str] | None = None) -> Registry:
    """A registry with the built-in operations and those of the given modules."""
    registry = Registry()
    registry.add(NOOP)
    ingest.register(registry)
    registry.load_modules(modules or [])
    return registry
