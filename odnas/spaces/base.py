"""The search-space contract: parameter specs, a builder and a canonical arch id.

Specs are plain frozen dataclasses that know how to draw a random member; the loop
turns them into Ax parameter configs (``odnas.loop.adapter``). Spaces never import Ax.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from odnas.errors import SpaceError

Params = Mapping[str, Any]


@dataclass(frozen=True)
class Range:
    """A numeric range; ``log`` samples and models it on a log scale."""

    name: str
    lo: float
    hi: float
    kind: str = "float"  # "float" | "int"
    log: bool = False

    def sample(self, rng: random.Random) -> Any:
        if self.log:
            v = math.exp(rng.uniform(math.log(self.lo), math.log(self.hi)))
        else:
            v = rng.uniform(self.lo, self.hi)
        return int(round(min(max(v, self.lo), self.hi))) if self.kind == "int" else v


@dataclass(frozen=True)
class Choice:
    """A discrete choice; ``dependents`` maps a value to parameters that exist only then."""

    name: str
    values: tuple[Any, ...]
    ordered: bool = True
    dependents: Mapping[Any, tuple[str, ...]] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        v = self.values[0]
        return ("bool" if isinstance(v, bool) else "int" if isinstance(v, int)
                else "float" if isinstance(v, float) else "str")

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(self.values)


Spec = Range | Choice


def spec_problem(specs: Sequence[Spec]) -> str | None:
    """What is wrong with a space's specs, in a few words, or None: before Ax is asked
    to make the search space (whose errors are tracebacks), and before a run dir is made."""
    names = [getattr(s, "name", None) for s in specs]
    for s in specs:
        if not isinstance(s, (Range, Choice)):
            return f"spec {s!r} is a {type(s).__name__}, not an odnas.spaces Range or Choice"
        if not isinstance(s.name, str) or not s.name:
            return f"spec {s!r} has no name"
        if names.count(s.name) > 1:
            return f"two specs are named {s.name!r}"
        if isinstance(s, Range):
            if s.kind not in ("int", "float"):
                return f"Range {s.name!r}: kind {s.kind!r} must be 'int' or 'float'"
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                       for v in (s.lo, s.hi)):
                return f"Range {s.name!r}: bounds {s.lo!r}, {s.hi!r} must be finite numbers"
            if not s.lo < s.hi:
                return f"Range {s.name!r}: lower bound {s.lo:g} must be below the upper {s.hi:g}"
            if s.kind == "int" and not (float(s.lo).is_integer() and float(s.hi).is_integer()):
                return f"Range {s.name!r}: an int range needs whole-number bounds, not {s.lo:g} and {s.hi:g}"
            if s.log and not s.lo > 0:
                return f"Range {s.name!r}: a log scale needs a lower bound above 0, not {s.lo:g}"
        else:
            if not isinstance(s.values, (tuple, list)):
                return f"Choice {s.name!r}: values must be a tuple, not a {type(s.values).__name__}"
            if not s.values:
                return f"Choice {s.name!r} has no values"
            kinds = {type(v) for v in s.values}
            if len(kinds) > 1:  # Ax takes one type per parameter: ints among floats would be cast
                return (f"Choice {s.name!r}: values must be of one type, here "
                        f"{', '.join(sorted(k.__name__ for k in kinds))} (write 0.0, not 0, among floats)")
            if not kinds <= {bool, int, float, str}:
                return f"Choice {s.name!r}: values must be numbers, strings or booleans, not {kinds.pop().__name__}"
            if len(set(s.values)) != len(s.values):
                return f"Choice {s.name!r} lists a value twice"
            for value, dependent in dict(s.dependents or {}).items():
                if value not in s.values:
                    return f"Choice {s.name!r}: dependents name the value {value!r}, which it does not offer"
                if missing := [n for n in dependent if n not in names]:
                    return f"Choice {s.name!r}: dependents name {', '.join(map(repr, missing))}, which no spec is"
    return None


class Space:
    """Base class of a search space. Subclasses set ``name`` and ``specs`` and
    implement ``build`` and ``arch_id``; training settings are read by ``training``."""

    name: str = ""
    description: str = ""
    specs: tuple[Spec, ...] = ()

    def searched(self, fixed: Mapping[str, Any] | None = None) -> list[Spec]:
        """The specs a search varies: all but the parameters held ``fixed`` (checked)."""
        fixed = self.check_fixed(fixed or {})
        return [s for s in self.specs if s.name not in fixed]

    def check_fixed(self, fixed: Mapping[str, Any]) -> Mapping[str, Any]:
        """Fixed values must name a parameter and lie in its domain."""
        by_name = {s.name: s for s in self.specs}
        for k, v in fixed.items():
            spec = by_name.get(k)
            if spec is None:
                raise SpaceError(f"space {self.name!r} has no parameter {k!r}; it has {', '.join(sorted(by_name))}")
            if isinstance(spec, Choice) and v not in spec.values:
                raise SpaceError(f"{k}={v!r} is not one of {list(spec.values)}")
            if isinstance(spec, Range) and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise SpaceError(f"{k}={v!r} is not a number; {k} is a{'n' if spec.kind == 'int' else ''} "
                                 f"{spec.kind} in [{spec.lo:g}, {spec.hi:g}]")
            if isinstance(spec, Range) and not spec.lo <= v <= spec.hi:
                raise SpaceError(f"{k}={v!r} is outside [{spec.lo:g}, {spec.hi:g}]")
            if isinstance(spec, Range) and spec.kind == "int" and not float(v).is_integer():
                raise SpaceError(f"{k}={v!r} is not a whole number; {k} is an int in [{spec.lo:g}, {spec.hi:g}]")
        return fixed

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """A random member, honouring dependent parameters."""
        return self._member(lambda s: s.sample(rng))

    def lowest(self, fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The member with every parameter not ``fixed`` at its low end: a range's ``lo``
        (rounded up to a whole number for an int range), a choice's first value
        (dependent parameters honoured, fixed values included)."""
        fixed = fixed or {}
        return self._member(lambda s: fixed[s.name] if s.name in fixed else s.values[0] if isinstance(s, Choice)
                            else math.ceil(s.lo) if s.kind == "int" else s.lo)

    def smallest(self, fixed: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """The space's cheapest member with the ``fixed`` parameters held at their values
        (``--fixed``), or None (the default) when the space cannot name one.

        A search measures it before it starts, so budgets that even it breaks are refused
        before anything is trained (``odnas.cost.lane.check_budgets``), not after the
        candidate cap. ``lowest(fixed)`` is the answer when no parameter makes the model
        cheaper as its value grows, given the fixed ones: the shipped spaces return it, or
        None where that does not hold. ``odnas.testing.check_space`` checks the answer
        against random members."""
        return None

    def _member(self, pick) -> dict[str, Any]:
        by_name = {s.name: s for s in self.specs}
        hidden: set[str] = set()
        out: dict[str, Any] = {}
        for s in self.specs:
            if s.name in hidden:
                continue
            out[s.name] = pick(s)
            if isinstance(s, Choice) and s.dependents:
                active = set(s.dependents.get(out[s.name], ()))
                for names in s.dependents.values():
                    hidden.update(n for n in names if n not in active)
        assert set(out) <= set(by_name)
        return out

    def build(self, params: Params, input_shape: Sequence[int], num_classes: int):  # -> nn.Module
        raise NotImplementedError

    def arch_id(self, params: Params) -> str:
        raise NotImplementedError

    def training(self, params: Params) -> dict[str, Any]:
        """Training settings: learning rate, epochs, batch size."""
        return {
            "lr": float(params["lr"]),
            "epochs": int(params["epochs"]),
            "batch_size": int(params["batch_size"]),
        }
