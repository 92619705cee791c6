"""Controlled sweeps: an optimizer's best config re-run at each value of one hyperparameter.

    sweep: {optimizer: hvadam, param: adaptivity, values: [-0.5, 0, 0.5, 1, 1.5], seeds: 3}
    # or a list of such mappings (adaptivity and lr, ...)

Once an optimizer's search is finished (the same test as the confirm phase's), its best search
trial's params are re-run with `param` set to each value and everything else fixed, on `seeds`
seeds each, as runs of phase "sweep" (extras: {"sweep": {"index", "param", "value", "set"}}).

- Work items are claims (`hvadam_claims`, phase "sweep"), one per (sweep, value, seed), so each
  runs exactly once however many workers, and a lost worker's claim is taken over. The slot is
  `sweep index * 10**6 + value index * 10**3 + seed index` (the sweep index is the position in
  the spec's list, so sweeps appended later keep the slots of the earlier ones).
- Seeds: seed index k runs with `confirm_seed(S, k)` (`studies.seeds.sweep_seed`): every value
  runs on the same seeds (differences between values are paired), and the run at the best
  config's own value repeats its confirm run on that seed.
- Conditional params: a param that exists only under a condition switches that condition on
  (sweeping `gamma` sets `noise_aware: true`); params the switch activates take their defaults.
  A fixed keyword (or an `lr` the space does not search) is swept by overriding it.
- Checked before any trial runs: the optimizer is a label of the campaign, the param is a searched
  or fixed hyperparameter of its space (or `lr`), and each value passes the optimizer's own
  validation (with the space's defaults for everything else).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from studies.budget import Budget
from studies.seeds import sweep_seed
from studies.spec import SpecError

if TYPE_CHECKING:
    from search_spaces import SearchSpace
    from studies.spec import CampaignSpec
    from studies.worker import Worker

__all__ = [
    "MAX_SWEEP_SEEDS",
    "MAX_SWEEP_VALUES",
    "SWEEP_KEYS",
    "Sweep",
    "check_sweeps",
    "parse_sweeps",
    "sweep_claims",
    "sweep_config",
    "sweep_runs",
    "sweep_slot",
    "sweep_step",
    "sweeps_complete",
    "sweeps_done",
]

SWEEP_KEYS = ("optimizer", "param", "values", "seeds")
MAX_SWEEP_VALUES = 999
MAX_SWEEP_SEEDS = 999
_VALUE_STRIDE = 1000
_SWEEP_STRIDE = 1_000_000


@dataclass(frozen=True)
class Sweep:
    """One controlled sweep of a spec; `key` names it in errors ("sweep" or "sweep[1]")."""

    optimizer: str
    param: str
    values: tuple[Any, ...]
    seeds: int
    key: str = "sweep"

    def normalized(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "param": self.param,
            "values": list(self.values),
            "seeds": self.seeds,
        }


def sweep_slot(sweep_index: int, value_index: int, seed_index: int) -> int:
    """The claim slot of one sweep run (unique per optimizer across its sweeps)."""
    return sweep_index * _SWEEP_STRIDE + value_index * _VALUE_STRIDE + seed_index


def _unslot(slot: int) -> tuple[int, int, int]:
    return slot // _SWEEP_STRIDE, slot % _SWEEP_STRIDE // _VALUE_STRIDE, slot % _VALUE_STRIDE


def sweep_runs(spec: CampaignSpec) -> int:
    """How many sweep runs the spec asks for (values x seeds, summed over its sweeps)."""
    return sum(len(s.values) * s.seeds for s in spec_sweeps(spec))


def spec_sweeps(spec: Any) -> tuple[Sweep, ...]:
    return tuple(getattr(spec, "sweeps", ()) or ())


# ---- the spec's `sweep:` key --------------------------------------------------------------------


def parse_sweeps(value: Any, fail: Any, labels: list[str]) -> tuple[Sweep, ...]:
    """The `sweep:` key (one mapping or a list of them), checked for structure and labels."""
    if value is None:
        return ()
    many = isinstance(value, (list, tuple))
    items = list(value) if many else [value]
    if many and not items:
        raise fail("sweep", "an empty list; give one sweep mapping or a list of them")
    sweeps: list[Sweep] = []
    for i, item in enumerate(items):
        key = f"sweep[{i}]" if many else "sweep"
        if not isinstance(item, Mapping):
            raise fail(
                key,
                "must be a mapping like {optimizer: hvadam, param: adaptivity, "
                f"values: [0, 0.5, 1], seeds: 3}}, got {item!r}",
            )
        extra = sorted(set(map(str, item)) - set(SWEEP_KEYS))
        if extra:
            raise fail(f"{key}.{extra[0]}", f"unknown key; allowed: {', '.join(SWEEP_KEYS)}")
        for needed in ("optimizer", "param", "values"):
            if needed not in item:
                raise fail(f"{key}.{needed}", "missing (required: optimizer, param, values)")
        label = item["optimizer"]
        if label not in labels:
            raise fail(
                f"{key}.optimizer",
                f"{label!r} is not an optimizer of this campaign (its labels: {', '.join(labels)})",
            )
        param = item["param"]
        if not isinstance(param, str) or not param:
            raise fail(f"{key}.param", f"must be a hyperparameter name, got {param!r}")
        values = item["values"]
        if not isinstance(values, (list, tuple)) or not values:
            raise fail(f"{key}.values", f"must be a non-empty list of values, got {values!r}")
        if len(values) > MAX_SWEEP_VALUES:
            raise fail(f"{key}.values", f"at most {MAX_SWEEP_VALUES} values, got {len(values)}")
        for j, v in enumerate(values):
            if not isinstance(v, (bool, int, float, str)):
                raise fail(f"{key}.values[{j}]", f"must be a number, bool or string, got {v!r}")
            if any(_same(v, w) for w in values[:j]):
                raise fail(f"{key}.values[{j}]", f"{v!r} is given twice")
        seeds = item.get("seeds", 3)
        if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= 999:
            raise fail(
                f"{key}.seeds", f"must be an integer in [1, {MAX_SWEEP_SEEDS}], got {seeds!r}"
            )
        for other in sweeps:
            if (other.optimizer, other.param) == (label, param):
                raise fail(
                    f"{key}.param",
                    f"{label}.{param} is swept already by {other.key}; merge their values",
                )
        sweeps.append(Sweep(label, param, tuple(values), seeds, key))
    return tuple(sweeps)


def _same(a: Any, b: Any) -> bool:
    return (type(a) is type(b) and a == b) or (
        not isinstance(a, (bool, str)) and not isinstance(b, (bool, str)) and a == b
    )


def sweep_config(
    space: SearchSpace, params: Mapping[str, Any], param: str, value: Any
) -> tuple[SearchSpace, dict[str, Any], dict[str, Any]]:
    """`params` (a search-space sample) with `param` set to `value`, everything else kept.

    Returns the space to run with (a copy with the keyword overridden when `param` is not
    searched), the params, and the condition switches that had to change (`gamma` needs
    `noise_aware: true`). Params the switch activates take their defaults (else the first choice
    or the low end); params it deactivates are dropped.
    """
    from search_spaces import SearchSpace

    config = dict(params)
    if param not in space.params:
        fixed = {**space.fixed, param: value}
        run_space = SearchSpace(
            optimizer=space.optimizer,
            params=space.params.values(),
            fixed=fixed,
            source=f"{space.source} (sweep {param} = {value!r})",
            description=space.description,
        )
        return run_space, config, {}
    spec_ = space.params[param]
    switched = {}
    for switch, allowed in spec_.when.items():
        if not any(_same(config.get(switch), a) for a in allowed):
            config[switch] = allowed[0]
            switched[switch] = allowed[0]
    config[param] = value
    active = space.active(config)
    for name in active:
        if name not in config:
            p = space.params[name]
            config[name] = (
                p.default if p.has_default else (p.choices[0] if p.choices is not None else p.low)
            )
    return space, {k: v for k, v in config.items() if k in active}, switched


def check_sweeps(spec: CampaignSpec, spaces: Mapping[str, SearchSpace]) -> None:
    """Each sweep's param and values against its optimizer's space and own validation.

    `SpecError` naming the key ("sweep.values[2]: restart_threshold = 3 is refused by ...").
    """
    import hvadam

    for sw in spec_sweeps(spec):
        space = spaces[sw.optimizer]
        if sw.param not in space.params and sw.param not in space.fixed and sw.param != "lr":
            known = sorted(set(space.params) | set(space.fixed))
            raise SpecError(
                f"spec {spec.source}: {sw.key}.param: {sw.param!r} is not a searched or fixed "
                f"hyperparameter of {sw.optimizer!r}'s space (nor lr); it has: {', '.join(known)}"
            )
        p = space.params.get(sw.param)
        for j, value in enumerate(sw.values):
            key = f"spec {spec.source}: {sw.key}.values[{j}]"
            choices = (p.choices or ()) if p is not None else ()
            if p is not None and p.search_only and not any(_same(value, c) for c in choices):
                raise SpecError(
                    f"{key}: {sw.param} = {value!r} is not one of its choices "
                    f"{list(choices)!r} (it is a switch, not an optimizer keyword)"
                )
            if (
                p is not None
                and p.kind in ("float", "int")
                and (
                    isinstance(value, (bool, str))
                    or (p.kind == "int" and not isinstance(value, int))
                )
            ):
                raise SpecError(f"{key}: {sw.param} = {value!r} is not {_kind(p.kind)}")
            run_space, config, _ = sweep_config(space, space.default_params(), sw.param, value)
            try:
                hp = run_space.to_hyperparameters(config)
                hvadam.create_optimizer(space.optimizer, [], **hp)
            except (ValueError, TypeError, RuntimeError) as exc:
                text = " ".join(str(exc).split()) or type(exc).__name__
                if "empty parameter list" in text:
                    continue  # checked and accepted before torch refused the empty list
                raise SpecError(
                    f"{key}: {sw.param} = {value!r} is refused by {space.optimizer!r}: {text}"
                ) from None


def _kind(kind: str) -> str:
    return "an integer" if kind == "int" else "a number"


# ---- running the sweep phase (both backends) ------------------------------------------------


def _slots(sw: Sweep, index: int) -> list[int]:
    return [sweep_slot(index, j, k) for j in range(len(sw.values)) for k in range(sw.seeds)]


def sweep_step(worker: Worker) -> bool:
    """Claim and run one open sweep run of an optimizer whose search is finished.

    False when there is none this worker may take now (all taken, or searches still running).
    """
    sweeps = spec_sweeps(worker.spec)
    if not sweeps:
        return False
    claims = worker.db.claims(worker.spec.name, "sweep")
    now = time.time()
    grace = worker.config.grace_period
    held = {
        (c["optimizer"], c["slot"])
        for c in claims
        if c["status"] == "done" or now - c["heartbeat_at"] <= grace
    }
    k = len(sweeps)
    for n in range(k):
        i = (n + worker.index) % k  # workers start on different sweeps
        sw = sweeps[i]
        open_ = [s for s in _slots(sw, i) if (sw.optimizer, s) not in held]
        if not open_:
            continue
        if not worker.counts(sw.optimizer).search_finished(Budget.of(worker.spec)):
            continue
        best = worker._best_trial(sw.optimizer)
        if best is None:
            continue
        for slot in open_:
            taken = worker.db.claim(
                campaign=worker.spec.name,
                optimizer=sw.optimizer,
                phase="sweep",
                slot=slot,
                grace_period=grace,
            )
            if taken is not None:
                _run_sweep(worker, i, sw, best, slot, *taken)
                return True
    return False


def _run_sweep(
    worker: Worker, index: int, sw: Sweep, best: Any, slot: int, claim_id: int, token: str
) -> None:
    from studies.trial import record, run_trial, start_run

    _, j, k = _unslot(slot)
    value = sw.values[j]
    label = sw.optimizer
    space, params, switched = sweep_config(worker.spaces[label], best.params, sw.param, value)
    seed = sweep_seed(worker.spec.seed, k)
    db = worker.db
    run_id = start_run(
        db, worker.spec, label, space, params,
        trial_number=best.number, phase="sweep", seed=seed, device=worker.device,
    )  # fmt: skip
    db.attach_run(claim_id, token, run_id)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(worker.config.heartbeat_interval):
            db.heartbeat_claim(claim_id, token)

    beater = threading.Thread(target=beat, name="hvadam-sweep-heartbeat", daemon=True)
    beater.start()
    try:
        outcome = run_trial(
            db, worker.workload, space, params, run_id=run_id, seed=seed, device=worker.device,
            phase="sweep", flush_interval=worker.curve_flush_interval,
        )  # fmt: skip
    except BaseException:
        stop.set()
        beater.join()
        db.abandon_claim(claim_id, token)  # immediately stale: the next worker takes it
        db.fail_run_if_running(run_id, "interrupted; the sweep run is open again")
        raise
    stop.set()
    beater.join()
    if not db.complete_claim(claim_id, token):
        outcome = replace(
            outcome,
            status="failed",
            reason="duplicate: this claim was taken over by another worker",
        )
    extras = {"sweep": {"index": index, "param": sw.param, "value": value, "set": switched}}
    record(db, run_id, outcome, extras=extras)
    worker._emit(worker._event(label, "sweep", outcome, best.number, seed, run_id))
    worker.live.run_finished("sweep", label)


def sweep_claims(worker: Worker) -> list[dict[str, Any]]:
    """The campaign's sweep claims (none read when the spec has no sweep)."""
    return worker.db.claims(worker.spec.name, "sweep") if spec_sweeps(worker.spec) else []


def sweeps_complete(spec: CampaignSpec, claims: list[dict[str, Any]], with_best: set[str]) -> bool:
    """Whether every sweep run of the optimizers in `with_best` (those with a complete search
    trial, so a best config to sweep) is done."""
    done = {(c["optimizer"], c["slot"]) for c in claims if c["status"] == "done"}
    for i, sw in enumerate(spec_sweeps(spec)):
        if sw.optimizer not in with_best:
            continue
        if any((sw.optimizer, s) not in done for s in _slots(sw, i)):
            return False
    return True


def sweeps_done(worker: Worker) -> bool:
    """The worker's test: every sweep of an optimizer that has a best trial is done."""
    sweeps = spec_sweeps(worker.spec)
    if not sweeps:
        return True
    with_best = {s.optimizer for s in sweeps if worker._best_trial(s.optimizer) is not None}
    return sweeps_complete(worker.spec, worker.db.claims(worker.spec.name, "sweep"), with_best)
