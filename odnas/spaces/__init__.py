"""Registry of search spaces (timm-style): ``register_space``, ``list_spaces``, ``get_space``.

The registry is filled once, here, with the shipped spaces (their modules import only
``odnas.spaces.base``); it is read-only afterwards (``get_space`` returns fresh
instances, never shared mutable state).
A user's own space needs no registration: ``get_space`` also takes a reference,
``my_pkg.spaces:KwsSpace`` or ``path/to/file.py:KwsSpace``, and the name of an
installed package's ``odnas.spaces`` entry point (``odnas.plugins``).
"""

from __future__ import annotations

import fnmatch
from typing import Callable

from odnas.errors import SpaceError
from odnas.plugins import entry_point, entry_point_names, is_reference, load_reference
from odnas.spaces.base import Choice, Params, Range, Space, spec_problem

_REGISTRY: dict[str, Callable[[], Space]] = {}


def register_space(factory: Callable[[], Space]) -> Callable[[], Space]:
    name = factory().name
    if name in _REGISTRY:
        raise ValueError(f"space {name!r} is registered twice")
    _REGISTRY[name] = factory
    return factory


ENTRY_POINTS = "odnas.spaces"


def list_spaces(pattern: str = "*") -> list[str]:
    """Shipped spaces and installed packages' ``odnas.spaces`` entry points."""
    return sorted(n for n in {*_REGISTRY, *entry_point_names(ENTRY_POINTS)} if fnmatch.fnmatch(n, pattern))


def get_space(name: str) -> Space:
    """A fresh space: a shipped one by name, an entry point by name, or a reference."""
    if name in _REGISTRY:
        return _REGISTRY[name]()
    obj = (load_reference(name, "space", SpaceError) if is_reference(name)
           else entry_point(ENTRY_POINTS, name, SpaceError))
    if obj is None and name.endswith(".py"):
        raise SpaceError(f"space {name!r}: name the class in the file too, as {name}:ClassName")
    if obj is None:
        raise SpaceError(f"unknown space {name!r}; choose from {', '.join(list_spaces())}, or name your own "
                         "as package.module:Class or path/to/file.py:Class")
    return as_space(obj, name)


def spec_lines(space: Space) -> list[str]:
    """A space's specs as a run keeps them, to tell when it is resumed that the space's
    code has changed since it began: one JSON object per parameter (its name, type and
    domain), by name, so the order the specs are listed in does not matter."""
    import json

    out = {}
    for s in space.specs:
        if isinstance(s, Range):
            d = {"name": s.name, "type": "range", "kind": s.kind, "lo": s.lo, "hi": s.hi, "log": bool(s.log)}
        else:
            d = {"name": s.name, "type": "choice", "values": list(s.values), "ordered": bool(s.ordered),
                 "dependents": {str(k): list(v) for k, v in dict(s.dependents or {}).items()}}
        out[s.name] = json.dumps(d, sort_keys=True, default=str)
    return [out[name] for name in sorted(out)]


def check_unchanged(space: Space, settings) -> None:
    """One line if ``space``'s specs differ from the ones ``settings`` (a run's) began
    with: Ax keeps the run's own, so new candidates would not be what the code now
    builds, and the run's candidates may not rebuild. Runs from before the specs were
    kept are not checked."""
    import json

    try:
        then = {json.loads(line)["name"]: line for line in getattr(settings, "space_specs", None) or []}
    except (ValueError, TypeError, KeyError):
        return  # kept in a form this odnas does not read: nothing to compare
    now = {json.loads(line)["name"]: line for line in spec_lines(space)}
    changed = sorted(n for n in then.keys() | now.keys() if then.get(n) != now.get(n))
    if then and changed:
        raise SpaceError(f"space {space.name!r} has changed since this run began (parameter"
                         f"{'s' if len(changed) != 1 else ''} {', '.join(changed)}); a run keeps the space it "
                         "began with: restore its code, or start a new search")


def as_space(obj: object, ref: str = "") -> Space:
    """A ``Space`` from a subclass, an instance, or a factory returning one; checked
    for what every space must define."""
    if isinstance(obj, type) and not issubclass(obj, Space):
        raise SpaceError(f"space {ref or obj!r} is a class {obj.__name__}, not an odnas.spaces.Space subclass")
    try:
        space = obj() if callable(obj) and not isinstance(obj, Space) else obj
    except Exception as e:  # the user's factory or constructor: one line on what it raised
        raise SpaceError(f"space {ref or obj!r}: making it raised {type(e).__name__}: {e}") from None
    if not isinstance(space, Space):
        raise SpaceError(f"space {ref or obj!r} is a {type(space).__name__}, not an odnas.spaces.Space")
    missing = [m for m in ("build", "arch_id") if getattr(type(space), m) is getattr(Space, m)]
    if not space.name or not space.specs or missing:
        raise SpaceError(f"space {ref or type(space).__name__!r} must set name and specs and define build and "
                         f"arch_id ({', '.join(missing + [a for a in ('name', 'specs') if not getattr(space, a)])} "
                         "missing); see docs/plugins.md")
    if why := spec_problem(space.specs):
        raise SpaceError(f"space {ref or type(space).__name__!r}: {why}")
    uses = {"lr", "epochs", "batch_size"} - {s.name for s in space.specs}
    if uses and type(space).training is Space.training:  # the default training() reads all three
        raise SpaceError(f"space {ref or type(space).__name__!r} has no {', '.join(sorted(uses))} "
                         f"spec{'s' if len(uses) > 1 else ''}, which training() reads; add "
                         f"{'them' if len(uses) > 1 else 'it'}, or define training() (docs/plugins.md)")
    return space


from odnas.spaces.mlp import MLPSpace  # noqa: E402
from odnas.spaces.mobile_cnn import MobileCNNSpace, MobileCNNXLSpace  # noqa: E402

for _space in (MLPSpace, MobileCNNSpace, MobileCNNXLSpace):
    register_space(_space)

__all__ = ["Choice", "Params", "Range", "Space", "as_space", "check_unchanged", "get_space", "list_spaces",
           "register_space", "spec_lines"]
