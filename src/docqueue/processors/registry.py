"""Processors by operation name, the resources they need, and the per-process cache of those resources."""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from docqueue.errors import InvalidJob
from docqueue.models import JSON
from docqueue.processors.context import Context

log = logging.getLogger("docqueue.resources")
#: Deepest nesting of lists and objects params may have (deeper ones are refused: the JSON
#: tools on the way, pydantic's included, fail on a few hundred levels).
MAX_PARAMS_DEPTH = 64

ProcessorFunc = Callable[[Context], JSON | None]


@dataclass(frozen=True)
class Processor:
    """An operation: a function from a context to a small JSON result, and how to run it."""

    name: str
    func: ProcessorFunc
    params_model: type[BaseModel] | None = None
    queue: str | None = None
    timeout: float | None = None
    max_attempts: int | None = None
    resources: tuple[str, ...] = ()
    #: Media types of the input file it takes; empty means it takes no file.
    accepts: tuple[str, ...] = ()
    description: str = ""

    @property
    def takes_file(self) -> bool:
        """True when a job of this operation needs an input file."""
        return bool(self.accepts)


@dataclass(frozen=True)
class Resource:
    """Something heavy a processor needs (a model, a client): loaded once per process."""

    name: str
    factory: Callable[[], Any]
    #: Load when a worker process starts rather than on first use.
    warm: bool = False


@dataclass
class Registry:
    """The processors and resources one docqueue installation knows."""

    processors: dict[str, Processor] = field(default_factory=dict)
    resources: dict[str, Resource] = field(default_factory=dict)

    def add(self, processor: Processor) -> Processor:
        """Register `processor`; a second one under the same name is a programming error."""
        if processor.name in self.processors:
            raise ValueError(f"operation {processor.name!r} is registered twice")
        unknown = [name for name in processor.resources if name not in self.resources]
        if unknown:
            raise ValueError(
                f"operation {processor.name!r} needs resources {unknown} that are not registered; "
                "register resources before the processors that use them"
            )
        self.processors[processor.name] = processor
        return processor

    def processor(self, name: str, **options: Any) -> Callable[[ProcessorFunc], ProcessorFunc]:
        """Decorator form of `add`: `@registry.processor("thumbnail", params_model=...)`."""

        def decorate(func: ProcessorFunc) -> ProcessorFunc:
            self.add(Processor(name=name, func=func, **options))
            return func

        return decorate

    def resource(self, name: str, *, warm: bool = False) -> Callable[[Callable[[], Any]], Any]:
        """Decorator that registers a resource factory under `name`."""

        def decorate(factory: Callable[[], Any]) -> Callable[[], Any]:
            self.resources[name] = Resource(name=name, factory=factory, warm=warm)
            return factory

        return decorate

    def get(self, operation: str) -> Processor:
        """The processor for `operation`, or an error that lists the known ones."""
        try:
            return self.processors[operation]
        except KeyError:
            known = ", ".join(sorted(self.processors)) or "none"
            raise InvalidJob(
                f"unknown operation {operation!r}; known operations: {known}"
            ) from None

    def validate(self, operation: str, params: object) -> JSON:
        """Check `params` for `operation` at enqueue; return them as they will be stored."""
        processor = self.get(operation)
        if not isinstance(params, dict):
            raise InvalidJob(f"params must be a JSON object, not {type(params).__name__}")
        if _depth(params) > MAX_PARAMS_DEPTH:
            raise InvalidJob(
                f"params are nested more than {MAX_PARAMS_DEPTH} levels deep; flatten them"
            )
        if processor.params_model is not None:
            try:
                model = processor.params_model.model_validate(params)
            except ValidationError as exc:
                raise InvalidJob(f"invalid params for {operation!r}: {_explain(exc)}") from None
            params = model.model_dump(mode="json", exclude_unset=True)
        return ensure_json(params, "params")

    def load_modules(self, modules: Iterable[str]) -> None:
        """Import each module and call its `register(registry)`, so custom operations join."""
        for module_name in modules:
            module = importlib.import_module(module_name)
            register = getattr(module, "register", None)
            if register is None:
                raise ValueError(
                    f"module {module_name!r} has no register(registry) function to add its processors"
                )
            register(self)


class Resources:
    """The resources one process has loaded, each loaded once for the life of the process."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._loaded: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        """The resource `name`, loading it on first use."""
        if name not in self._loaded:
            started = time.monotonic()
            self._loaded[name] = self._registry.resources[name].factory()
            took = time.monotonic() - started
            log.info("loaded resource %s in %.2fs in process %d", name, took, os.getpid())
        return self._loaded[name]

    def warm_up(self) -> None:
        """Load every resource marked warm, at process start."""
        for resource in self._registry.resources.values():
            if resource.warm:
                self.get(resource.name)


def _depth(value: object) -> int:
    """How deep lists and objects nest in `value` (walked without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list | tuple):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item)
    return deepest


def ensure_json(value: JSON, what: str) -> JSON:
    """Return `value` if it survives a JSON round trip unchanged in shape, else say why not."""
    try:
        encoded = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidJob(f"{what} cannot be stored as JSON: {exc}") from None
    decoded: JSON = json.loads(encoded)
    return decoded


def _explain(exc: ValidationError) -> str:
    """One readable line per problem: `sleep_ms: Input should be a valid integer`."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(item) for item in error["loc"]) or "params"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
