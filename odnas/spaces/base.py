"""The search-space contract: parameter specs, a builder and a canonical arch id.

Specs are plain frozen dataclasses that know how to become Ax parameter configs and
how to draw a random member, so every space gets both for free.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

Params = Mapping[str, Any]


@dataclass(frozen=True)
class Range:
    """A numeric range; ``log`` samples and models it on a log scale."""

    name: str
    lo: float
    hi: float
    kind: str = "float"  # "float" | "int"
    log: bool = False

    def to_ax(self) -> Any:
        from ax.api.configs import RangeParameterConfig

        lo, hi = (int(self.lo), int(self.hi)) if self.kind == "int" else (float(self.lo), float(self.hi))
        return RangeParameterConfig(
            name=self.name, bounds=(lo, hi), parameter_type=self.kind,
            scaling="log" if self.log else "linear",
        )

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
        return "bool" if isinstance(v, bool) else "int" if isinstance(v, int) else "float" if isinstance(v, float) else "str"

    def to_ax(self) -> Any:
        from ax.api.configs import ChoiceParameterConfig

        return ChoiceParameterConfig(
            name=self.name, values=list(self.values), parameter_type=self.kind,
            is_ordered=self.ordered if self.kind != "bool" else None,
            dependent_parameters={k: list(v) for k, v in self.dependents.items()} or None,
        )

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(self.values)


Spec = Range | Choice


class Space:
    """Base class of a search space. Subclasses set ``name`` and ``specs`` and
    implement ``build`` and ``arch_id``; training settings are read by ``training``."""

    name: str = ""
    description: str = ""
    specs: tuple[Spec, ...] = ()

    def ax_parameters(self, fixed: Mapping[str, Any] | None = None) -> list[Any]:
        """Ax parameter configs, leaving out the parameters held ``fixed``."""
        fixed = self.check_fixed(fixed or {})
        return [s.to_ax() for s in self.specs if s.name not in fixed]

    def check_fixed(self, fixed: Mapping[str, Any]) -> Mapping[str, Any]:
        """Fixed values must name a parameter and lie in its domain."""
        by_name = {s.name: s for s in self.specs}
        for k, v in fixed.items():
            spec = by_name.get(k)
            if spec is None:
                raise ValueError(f"space {self.name!r} has no parameter {k!r}; it has {', '.join(sorted(by_name))}")
            if isinstance(spec, Choice) and v not in spec.values:
                raise ValueError(f"{k}={v!r} is not one of {list(spec.values)}")
            if isinstance(spec, Range) and (isinstance(v, bool) or not isinstance(v, (int, float))
                                            or not spec.lo <= v <= spec.hi):
                raise ValueError(f"{k}={v!r} is outside [{spec.lo:g}, {spec.hi:g}]")
        return fixed

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """A random member, honouring dependent parameters."""
        by_name = {s.name: s for s in self.specs}
        hidden: set[str] = set()
        out: dict[str, Any] = {}
        for s in self.specs:
            if s.name in hidden:
                continue
            out[s.name] = s.sample(rng)
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
