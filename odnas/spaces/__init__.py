"""Registry of search spaces (timm-style): ``register_space``, ``list_spaces``, ``get_space``.

The registry is filled once at import by the space modules below; it is read-only
afterwards (``get_space`` returns fresh instances, never shared mutable state).
"""

from __future__ import annotations

import fnmatch
from typing import Callable

from odnas.errors import SpaceError
from odnas.spaces.base import Choice, Params, Range, Space

_REGISTRY: dict[str, Callable[[], Space]] = {}


def register_space(factory: Callable[[], Space]) -> Callable[[], Space]:
    name = factory().name
    if name in _REGISTRY:
        raise ValueError(f"space {name!r} is registered twice")
    _REGISTRY[name] = factory
    return factory


def list_spaces(pattern: str = "*") -> list[str]:
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_space(name: str) -> Space:
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise SpaceError(f"unknown space {name!r}; choose from {', '.join(list_spaces())}") from None


from odnas.spaces import mlp as _mlp, mobile_cnn as _mobile_cnn  # noqa: E402,F401  (fill the registry)

__all__ = ["Choice", "Params", "Range", "Space", "get_space", "list_spaces", "register_space"]
