"""The method registry: name -> :class:`Method`. Method modules register with ``@register``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import FxcamError, closest


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable
    kind: str  # "gradient" | "activation" | "driver"
    summary: str
    paper: str
    project: bool = False  # the map is the first principal component of the contributions
    layer_scale: Callable | None = field(default=None)  # applied to each normalized layer map before fusion

    @property
    def options(self) -> dict[str, object]:
        params = list(inspect.signature(self.fn).parameters.values())
        skip = {"gradient": 2, "activation": 1, "driver": 1}[self.kind]
        return {p.name: p.default for p in params[skip:]}

    def check_options(self, options: dict) -> None:
        valid = self.options
        unknown = [k for k in options if k not in valid]
        if unknown:
            raise FxcamError(
                f"Method '{self.name}' has no option {unknown}; its options are {valid or 'none'}."
            )


_REGISTRY: dict[str, Method] = {}
KINDS = ("gradient", "activation", "driver")


def register(name: str, *, kind: str, summary: str, paper: str, project: bool = False, layer_scale=None):
    """Decorator: register ``fn`` under ``name``."""
    if kind not in KINDS:
        raise FxcamError(f"kind must be one of {KINDS}; got {kind!r}")

    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise FxcamError(f"A method named {name!r} is already registered.")
        _REGISTRY[name] = Method(name, fn, kind, summary, paper, project, layer_scale)
        return fn

    return deco


def get(name: str) -> Method:
    """The registered method ``name`` (case-insensitive; ``-``/``_``/``+`` spellings accepted)."""
    if isinstance(name, Method):
        return name
    key = str(name).lower().replace("-", "").replace("+", "p").replace(" ", "")
    aliases = {"gradcamplusplus": "gradcampp", "gradcam++": "gradcampp", "smoothgradcamplusplus": "smoothgradcampp"}
    key = aliases.get(key, key)
    if key not in _REGISTRY:
        key = key.replace("_", "")
        match = {k.replace("_", ""): k for k in _REGISTRY}.get(key)
        if match is None:
            raise FxcamError(
                f"Unknown method {name!r}. Closest: {closest(str(name), _REGISTRY)}; all methods: {available()} "
                f"(fxcam.methods.available())."
            )
        key = match
    return _REGISTRY[key]


def available() -> list[str]:
    """Names of all registered methods."""
    return sorted(_REGISTRY)


def describe() -> dict[str, str]:
    """``{name: one-line summary}`` for every method."""
    return {name: _REGISTRY[name].summary for name in available()}


__all__ = ["Method", "register", "get", "available", "describe", "KINDS"]
