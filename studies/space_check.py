"""A campaign's search spaces checked against the optimizers' own validation, at spec load."""

from __future__ import annotations

from typing import Any

from studies.spec import SpecError

__all__ = ["check_space_values"]


def check_space_values(source: str, label: str, space: Any) -> None:
    """Build the optimizer with every value the space can hand it; `SpecError` on a refusal.

    The optimizer's own validation decides (an unknown keyword, a negative or NaN learning
    rate, a string for a number, a beta of 1.5): the defaults with each fixed value, then
    every searched parameter at the ends of its range (each choice of a categorical one) with
    the others at their defaults. What passes here cannot fail a trial for its config.
    """
    import hvadam

    key = f"optimizers.{label}"
    known = hvadam.optimizer_defaults(space.optimizer)
    unknown = sorted(space.hyperparameter_names() - set(known))
    if unknown:
        raise SpecError(
            f"spec {source}: {key}.{unknown[0]}: not a hyperparameter of {space.optimizer!r}; "
            f"it accepts: {', '.join(known)}"
        )

    def build(**hyperparameters: Any) -> None:
        # Over no parameters: an optimizer checks its hyperparameters before torch's
        # `Optimizer.__init__` refuses the empty list, which it does before importing
        # torch._dynamo (seconds) to add a param group. That refusal means "accepted".
        try:
            hvadam.create_optimizer(space.optimizer, [], **hyperparameters)
        except ValueError as exc:
            if "empty parameter list" not in str(exc):
                raise

    def refusal(params: dict[str, Any]) -> str | None:
        try:
            build(
                **space.to_hyperparameters(
                    {name: params[name] for name in space.active(params) if name in params}
                )
            )
        except (ValueError, TypeError, RuntimeError) as exc:
            return " ".join(str(exc).split()) or type(exc).__name__
        return None

    defaults = space.default_params()
    problem = refusal(defaults)
    if problem is not None:
        # Name the fixed value at fault when one alone is refused.
        culprit = ""
        alone = [(name, value, "") for name, value in space.fixed.items()] + [
            (name, value, " (its default)")
            for name, value in defaults.items()
            if not space.params[name].search_only
        ]
        for name, value, what in alone:
            if "." in name:
                continue
            try:
                build(**{name: value})
            except (ValueError, TypeError, RuntimeError):
                culprit = f".{name}"
                problem = f"{value!r}{what} is refused by {space.optimizer!r}: {problem}"
                break
        raise SpecError(f"spec {source}: {key}{culprit}: {problem}")
    for name, p in space.params.items():
        values = p.choices if p.choices is not None else (p.low, p.high)
        for value in values:
            if value is None:
                continue
            trial = dict(defaults)
            # Switch the parameter on (its conditions' first values), then any parameter the
            # new values switch on takes its default, or a value of its range.
            for switch, allowed in p.when.items():
                trial[switch] = allowed[0]
            trial[name] = value
            for other in space.active(trial):
                if other not in trial:
                    spec_ = space.params[other]
                    trial[other] = (
                        spec_.default
                        if spec_.has_default
                        else (spec_.choices[0] if spec_.choices is not None else spec_.low)
                    )
            problem = refusal(trial)
            if problem is not None:
                raise SpecError(
                    f"spec {source}: {key}.{name}: {value!r} (an end of its range) is refused "
                    f"by {space.optimizer!r}: {problem}"
                )
