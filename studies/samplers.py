"""Samplers and pruners: the one table that spec validation and the factories both read.

A spec names a sampler as a string (`sampler: tpe`) or as a mapping with its options
(`sampler: {name: grid, points: 5}`); `SAMPLERS` says which names and options exist, with their
defaults. Options left at their defaults are not part of the normalised spec (nor its hash).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from search_spaces import SearchSpace

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "PrunerKind",
    "SamplerKind",
    "SamplerOption",
    "grid_space",
    "make_pruner",
    "make_sampler",
    "parse_pruner",
    "parse_sampler",
]


@dataclass(frozen=True)
class SamplerOption:
    """One option of a sampler: its default, and which values it accepts (`allowed` says so)."""

    default: Any
    check: Callable[[Any], bool]
    allowed: str


@dataclass(frozen=True)
class SamplerKind:
    """One sampler a spec may name: what it is, how it is built, its options."""

    summary: str
    build: Callable[[SearchSpace, int, dict[str, Any]], optuna.samplers.BaseSampler]
    options: dict[str, SamplerOption] = field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        return {name: option.default for name, option in self.options.items()}


def _tpe(space: SearchSpace, seed: int, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _random(space: SearchSpace, seed: int, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _cmaes(space: SearchSpace, seed: int, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


def _gp(space: SearchSpace, seed: int, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.GPSampler(seed=seed)


def _grid(space: SearchSpace, seed: int, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.GridSampler(grid_space(space, options["points"]), seed=seed)


def _qmc(space: SearchSpace, seed: int, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(
            qmc_type=options["qmc_type"], scramble=True, seed=seed, warn_independent_sampling=False
        )


SAMPLERS: dict[str, SamplerKind] = {
    "tpe": SamplerKind("Optuna's TPE (constant liar for parallel workers)", _tpe),
    "random": SamplerKind("uniform random search", _random),
    "cmaes": SamplerKind("CMA-ES", _cmaes),
    "gp": SamplerKind("Gaussian-process Bayesian optimisation", _gp),
    "grid": SamplerKind(
        "a grid: every categorical choice, `points` values per numeric range",
        _grid,
        {
            "points": SamplerOption(
                3,
                lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2,
                "an integer >= 2",
            )
        },
    ),
    "qmc": SamplerKind(
        "quasi-random search (scrambled Sobol or Halton points)",
        _qmc,
        {
            "qmc_type": SamplerOption(
                "sobol", lambda v: v in ("sobol", "halton"), "one of sobol, halton"
            )
        },
    ),
}


@dataclass(frozen=True)
class PrunerKind:
    """One pruner a spec may name: what it does, how it is built from the epoch budget."""

    summary: str
    build: Callable[[int], optuna.pruners.BasePruner]


def _median(max_epochs: int) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, max_epochs // 4))


def _hyperband(max_epochs: int) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=max(1, max_epochs), reduction_factor=3
    )


def _nop(max_epochs: int) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.NopPruner()


PRUNERS: dict[str, PrunerKind] = {
    "hyperband": PrunerKind("Hyperband's successive halving (reduction factor 3)", _hyperband),
    "median": PrunerKind("stop a trial below the median of earlier trials at its epoch", _median),
    "none": PrunerKind("never stop a trial early", _nop),
}


def parse_sampler(value: Any, fail: Callable[[str, str], Exception]) -> tuple[str, dict[str, Any]]:
    """A spec's `sampler` as (name, options that differ from the defaults); `fail(key, why)`."""
    allowed = ", ".join(SAMPLERS)
    options: dict[str, Any] = {}
    if isinstance(value, Mapping):
        options = {str(k): v for k, v in value.items() if k != "name"}
        value = value.get("name")
    if value not in SAMPLERS:
        raise fail("sampler", f"unknown sampler {value!r}; allowed: {allowed}")
    kind = SAMPLERS[value]
    for key, given in options.items():
        if key not in kind.options:
            known = ", ".join(["name", *kind.options])
            raise fail(f"sampler.{key}", f"unknown option of the {value} sampler; allowed: {known}")
        option = kind.options[key]
        if not option.check(given):
            raise fail(f"sampler.{key}", f"must be {option.allowed}, got {given!r}")
    return value, {k: v for k, v in options.items() if v != kind.options[k].default}


def parse_pruner(value: Any, fail: Callable[[str, str], Exception]) -> str:
    """A spec's `pruner` (None or false mean `none`); `fail(key, why)` makes the error."""
    if value is None or value is False:
        value = "none"
    if value not in PRUNERS:
        raise fail("pruner", f"unknown pruner {value!r}; allowed: {', '.join(PRUNERS)}")
    return str(value)


def make_sampler(
    name: str, space: SearchSpace, seed: int, options: Mapping[str, Any] | None = None
) -> optuna.samplers.BaseSampler:
    """The sampler `name` (a key of `SAMPLERS`) for one study, with `options` over the defaults."""
    try:
        kind = SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}") from None
    return kind.build(space, seed, {**kind.defaults(), **(options or {})})


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    try:
        return PRUNERS[name].build(max_epochs)
    except KeyError:
        raise ValueError(f"unknown pruner {name!r}; allowed: {', '.join(PRUNERS)}") from None


def grid_space(space: SearchSpace, points: int = 3) -> dict[str, list[Any]]:
    """A grid over a space's distributions: categorical choices, `points` values per range."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    grid: dict[str, list[Any]] = {}
    for name, dist in space.distributions().items():
        if isinstance(dist, CategoricalDistribution):
            grid[name] = list(dist.choices)
        elif isinstance(dist, (FloatDistribution, IntDistribution)):
            lo, hi = dist.low, dist.high
            if dist.log:
                values = [lo * (hi / lo) ** (i / (points - 1)) for i in range(points)]
            else:
                values = [lo + (hi - lo) * i / (points - 1) for i in range(points)]
            if isinstance(dist, IntDistribution):
                values = sorted({round(v) for v in values})
            grid[name] = values
    return grid
