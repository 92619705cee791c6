"""What HVAdam's and Anon's fast paths share: flat state, the dispatch settings, compiling.

**Flat state.** A param group's parameters that share a (device, dtype) form a *bucket*. A bucket
keeps each per-parameter state tensor (HVAdam's m, s, v; Anon's m, s, P) as one contiguous
buffer, and ``optimizer.state[p][name]`` is a view of the parameter's slice, shaped like the
parameter, so ``state_dict()`` keeps torch.optim's structure and checkpoints stay
interchangeable. The step counts are 0-d views of one float32 buffer per bucket, mirrored on
the host as Python integers: they only change by +1 in ``step``, so the bias corrections are
computed on the host, without reading the device. A parameter joins its bucket (which is packed
again, once) at its first gradient; a state loaded with ``load_state_dict`` is packed at the next
step.

A step works on *segments*: the runs of consecutive bucket members that have a gradient and the
same step count. Usually a bucket is one segment; a parameter without a gradient splits it in
two. Past ``MAX_SEGMENTS`` segments the step runs once over the whole bucket with per-element
bias corrections and a mask instead, so the number of operations per step never grows with the
number of parameter tensors.

**Settings.** ``HVADAM_COMPILE=0`` never compiles; ``HVADAM_CPU_KERNEL=0`` never runs the C++ CPU
kernels. With ``foreach=None`` a group is accelerated (compiled, or the CPU kernel) on CUDA, and on
a CPU from ``compile_min_numel`` elements (2**20): below that, compiling or building costs more
than a small model's whole run saves. ``settings`` holds these; ``overrides(...)`` changes them
for a block (tests, benchmarks).
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

# Past this many segments in a bucket, one masked pass runs instead of a pass per segment.
MAX_SEGMENTS = 4


@dataclass(frozen=True)
class Settings:
    """How the fast paths run (read once from the environment; see the module docstring)."""

    compile: bool = True
    cpu_kernel: bool = True
    compile_min_numel: int = 1 << 20

    @classmethod
    def from_environment(cls) -> Settings:
        return cls(
            compile=os.environ.get("HVADAM_COMPILE", "1") != "0",
            cpu_kernel=os.environ.get("HVADAM_CPU_KERNEL", "1") != "0",
        )


settings = Settings.from_environment()


@contextlib.contextmanager
def overrides(**changes: Any) -> Iterator[Settings]:
    """Run a block with some settings changed: ``with overrides(compile=False): ...``."""
    global settings
    previous = settings
    settings = replace(previous, **changes)
    try:
        yield settings
    finally:
        settings = previous


def accelerate(device: torch.device, foreach: bool | None, numel: int) -> bool:
    """Whether a group takes the accelerated path (compiled, or the CPU kernel)."""
    if foreach is True or device.type == "cuda":
        return True
    return numel >= settings.compile_min_numel


def use_cpu_kernel(device: torch.device, foreach: bool | None, numel: int) -> bool:
    return device.type == "cpu" and settings.cpu_kernel and accelerate(device, foreach, numel)


def use_compile(device: torch.device, foreach: bool | None, numel: int) -> bool:
    return (
        settings.compile
        and device.type in ("cpu", "cuda")
        and device.type not in _compile_broken
        and not torch.compiler.is_compiling()
        and accelerate(device, foreach, numel)
    )


# ---- compiling ---------------------------------------------------------------------------------

_compiled: dict[tuple[Any, ...], Callable[..., Any]] = {}
_compiled_ok: set[tuple[Any, ...]] = set()
_compile_broken: set[str] = set()


def _compiled_variant(fn: Callable[..., Any], key: tuple[Any, ...]) -> Callable[..., Any]:
    """``torch.compile(fn)`` for one variant (pass, device, dtype, static flags).

    torch.compile caches graphs per code object with a small recompile limit; giving each
    variant its own code object keeps variants (float32/float64/bfloat16, amsgrad, masked, ...)
    from evicting each other into eager fallback.
    """
    compiled = _compiled.get(key)
    if compiled is None:
        name = f"{fn.__name__}_{abs(hash(key)):x}"
        code = fn.__code__.replace(co_name=name)
        if sys.version_info >= (3, 11):
            code = code.replace(co_qualname=name)
        clone = types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
        compiled = torch.compile(clone, dynamic=True, fullgraph=True)
        _compiled[key] = compiled
    return compiled


def run(fn: Callable[..., Any], key: tuple[Any, ...] | None, *args: Any) -> Any:
    """``fn(*args)``, compiled for variant `key` (None: eagerly).

    A compiler that fails (no C++ compiler, an unsupported platform) is reported once per device
    type and the pass runs eagerly from then on. Compiling happens before the graph runs, so no
    tensor was touched yet; an error of the update itself recurs eagerly and reaches the caller.
    """
    if key is None:
        return fn(*args)
    compiled = _compiled_variant(fn, key)
    if key in _compiled_ok:
        return compiled(*args)
    device_type = key[1]
    try:
        result = compiled(*args)
    except Exception as error:
        _compile_broken.add(device_type)
        warnings.warn(
            f"hvadam: torch.compile failed on {device_type} ({type(error).__name__}: "
            f"{str(error)[:200]}); using the eager fast path",
            RuntimeWarning,
            stacklevel=3,
        )
        return fn(*args)
    _compiled_ok.add(key)
    return result


# ---- flat state --------------------------------------------------------------------------------


class Bucket:
    """The members of one param group on one (device, dtype), with their state as flat buffers.

    `names` are the state tensors kept flat (``init`` gives their initial value, 0 by default);
    ``optimizer.state[p]`` holds views of them and ``step``, a 0-d view of the step buffer.
    """

    def __init__(
        self,
        params: list[Tensor],
        state: Any,
        names: tuple[str, ...],
        init: dict[str, float],
        step_device: torch.device | None,
        known_steps: dict[int, int] | None = None,
        host_init: dict[str, Any] | None = None,
    ) -> None:
        first = params[0]
        self.device, self.dtype = first.device, first.dtype
        self.params = params
        self.sizes = [p.numel() for p in params]
        self.offsets = [0]
        for size in self.sizes:
            self.offsets.append(self.offsets[-1] + size)
        self.numel = self.offsets[-1]
        self.names = names
        self.buffers = {
            name: torch.full(
                (self.numel,), init.get(name, 0.0), device=first.device, dtype=first.dtype
            )
            for name in names
        }
        self.views: dict[str, list[Tensor]] = {
            name: [self._view(buf, i) for i in range(len(params))]
            for name, buf in self.buffers.items()
        }
        step_device = self.device if step_device is None else step_device
        self.step_buffer = torch.zeros(len(params), dtype=torch.float32, device=step_device)
        self.step_views = list(self.step_buffer.unbind(0))
        self.steps = [0] * len(params)
        # Work buffers of the gather/scatter passes, and views of them, made at first use.
        self._work: dict[str, tuple[Tensor, list[Tensor]]] = {}
        self._sizes_tensor: Tensor | None = None
        self._step_slices: dict[tuple[int, int], Tensor] = {}
        known_steps = known_steps or {}
        for i, p in enumerate(params):
            entry = state[p]
            self._adopt(i, entry, known_steps.get(id(p)))
            for key, value in (host_init or {}).items():
                entry.setdefault(key, value)

    def _view(self, buf: Tensor, i: int) -> Tensor:
        return buf[self.offsets[i] : self.offsets[i + 1]].view(self.params[i].shape)

    def _adopt(self, i: int, entry: dict[str, Any], known_step: int | None) -> None:
        """Copy a member's existing state (an older bucket, a loaded state dict) into the flat
        buffers, and make its state entries views of them. The step count is read from the
        device only when no older bucket mirrored it on the host (a loaded state dict)."""
        with torch.no_grad():
            for name in self.names:
                old = entry.get(name)
                if old is not None:
                    self.views[name][i].copy_(old)
                entry[name] = self.views[name][i]
            old_step = entry.get("step")
            if old_step is not None:
                step = int(old_step) if known_step is None else known_step
                self.step_views[i].fill_(step)
                self.steps[i] = step
            entry["step"] = self.step_views[i]

    def work(self, name: str) -> tuple[Tensor, list[Tensor]]:
        """A flat work buffer and its per-member views (made once)."""
        found = self._work.get(name)
        if found is None:
            buf = torch.empty(self.numel, device=self.device, dtype=self.dtype)
            found = self._work[name] = (buf, [self._view(buf, i) for i in range(len(self.params))])
        return found

    def step_slice(self, start: int, end: int) -> Tensor:
        """A view of members [start, end) of the step buffer (made once)."""
        found = self._step_slices.get((start, end))
        if found is None:
            found = self._step_slices[(start, end)] = self.step_buffer[start:end]
        return found

    def sizes_tensor(self) -> Tensor:
        if self._sizes_tensor is None:
            self._sizes_tensor = to_device(torch.tensor(self.sizes), self.device)
        return self._sizes_tensor

    def per_element(self, values: list[float], dtype: torch.dtype) -> Tensor:
        """One value per member spread over its elements (for the masked pass)."""
        return torch.repeat_interleave(
            host_scalars(values, dtype, self.device), self.sizes_tensor(), output_size=self.numel
        )


class Plan:
    """One bucket's share of a step: its members with a gradient (`idx`, in bucket order), their
    segments, and the lists the passes take. Kept per pattern of gradients and reused; the
    segments are found again (`segment`) whenever the plan was not the previous step's, since
    other patterns in between may have moved the members' step counts apart."""

    def __init__(self, bucket: Bucket, idx: list[int]) -> None:
        self.bucket = bucket
        self.idx = idx
        self.params = [bucket.params[i] for i in idx]
        self.numel = sum(bucket.sizes[i] for i in idx)
        self._lists: dict[str, list[Tensor]] = {}
        self._masks: tuple[Tensor, Tensor] | None = None
        self.mask: Tensor | None = None

    def segment(self, split: list[Any] | None) -> None:
        """Find the segments: runs of consecutive members whose steps (and `split` keys) are
        equal. They stay so while the same members step together."""
        bounds: list[list[Any]] = []
        steps = self.bucket.steps
        for i in self.idx:
            key = (steps[i], None if split is None else split[i])
            if bounds and bounds[-1][1] == i and bounds[-1][2] == key:
                bounds[-1][1] = i + 1
            else:
                bounds.append([i, i + 1, key])
        self.segments = [(start, end) for start, end, _ in bounds]
        # The segments as ranges of positions in the plan's lists (params, views, ...).
        self.positions: list[tuple[int, int]] = []
        count = 0
        for start, end in self.segments:
            self.positions.append((count, count + end - start))
            count += end - start
        offsets = self.bucket.offsets
        self.ranges = [(offsets[start], offsets[end]) for start, end in self.segments]
        self.masked = len(self.segments) > MAX_SEGMENTS
        self.mask = self._member_masks()[1] if self.masked else None
        self.step_slices = [self.bucket.step_slice(start, end) for start, end in self.segments]

    def _member_masks(self) -> tuple[Tensor, Tensor]:
        """(members with a gradient, per member on the step buffer's device; per element)."""
        if self._masks is None:
            bucket = self.bucket
            member = torch.zeros(len(bucket.params), dtype=torch.bool)
            member[self.idx] = True
            per_element = torch.repeat_interleave(
                to_device(member, bucket.device), bucket.sizes_tensor(), output_size=bucket.numel
            )
            self._masks = (to_device(member, bucket.step_buffer.device), per_element)
        return self._masks

    def views(self, name: str) -> list[Tensor]:
        """The members' views of state buffer `name`, or of work buffer `name`."""
        found = self._lists.get(name)
        if found is None:
            source = self.bucket.views.get(name)
            if source is None:
                source = self.bucket.work(name)[1]
            found = self._lists[name] = [source[i] for i in self.idx]
        return found

    def step_views(self) -> list[Tensor]:
        found = self._lists.get("step")
        if found is None:
            found = self._lists["step"] = [self.bucket.step_views[i] for i in self.idx]
        return found

    def advance(self) -> list[int]:
        """Count one step for the members (on the host and in the step buffer); return each
        segment's new step count."""
        steps = self.bucket.steps
        for i in self.idx:
            steps[i] += 1
        self.count_on_device()
        return [steps[start] for start, _ in self.segments]

    def count_on_device(self) -> None:
        if self.masked:
            self.bucket.step_buffer.add_(self._member_masks()[0])
        else:
            for view in self.step_slices:
                view.add_(1.0)


class FlatGroup:
    """A param group's buckets. A bucket is packed again when one of the group's parameters gets
    its first gradient; the optimizer drops the whole FlatGroup when its state is replaced
    (``load_state_dict``), so that the loaded state is packed at the next step."""

    def __init__(
        self,
        names: tuple[str, ...],
        init: dict[str, float] | None = None,
        step_device: torch.device | None = None,
        host_init: dict[str, Any] | None = None,
    ) -> None:
        self.names = names
        self.init = init or {}
        self.step_device = step_device
        self.host_init = host_init
        self.buckets: dict[tuple[torch.device, torch.dtype], Bucket] = {}
        self.member: dict[int, tuple[Bucket, int]] = {}
        self._last: tuple[list[Tensor], list[Plan]] | None = None
        # Plans by pattern of gradients (parameter ids), so that patterns that alternate
        # (a layer used every other step) do not rebuild theirs at every step.
        self._plans: dict[tuple[int, ...], list[Plan]] = {}

    def prepare(
        self,
        group_params: list[Tensor],
        params: list[Tensor],
        state: Any,
        split: Callable[[Bucket], list[Any]] | None = None,
    ) -> list[Plan]:
        """The plans of a step for the parameters with a gradient `params` (in group order).
        `split(bucket)` gives extra per-member keys that must be equal within a segment."""
        last = self._last
        if last is not None and _same(last[0], params):
            return last[1]
        pattern = tuple(id(p) for p in params)
        plans = self._plans.get(pattern)
        if plans is not None:
            for plan in plans:
                plan.segment(None if split is None else split(plan.bucket))
            self._last = (list(params), plans)
            return plans
        stale = set()
        for p in params:
            found = self.member.get(id(p))
            if found is None or found[0].params[found[1]] is not p:
                stale.add((p.device, p.dtype))
        for key in stale:
            present = {id(p) for p in params}
            members = [
                p
                for p in group_params
                if (p.device, p.dtype) == key and (id(p) in present or (state.get(p)))
            ]
            old = self.buckets.get(key)
            known = {} if old is None else {id(q): old.steps[i] for i, q in enumerate(old.params)}
            bucket = Bucket(
                members, state, self.names, self.init, self.step_device, known, self.host_init
            )
            self.buckets[key] = bucket
            for i, p in enumerate(members):
                self.member[id(p)] = (bucket, i)
            self._plans.clear()  # their buckets are gone
        by_bucket: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for p in params:
            bucket, i = self.member[id(p)]
            by_bucket.setdefault((bucket.device, bucket.dtype), []).append(i)
        plans = []
        for key, idx in by_bucket.items():
            plan = Plan(self.buckets[key], idx)
            plan.segment(None if split is None else split(plan.bucket))
            plans.append(plan)
        if len(self._plans) >= 8:
            self._plans.clear()
        self._plans[pattern] = plans
        self._last = (list(params), plans)
        return plans


def _same(a: list[Any], b: list[Any]) -> bool:
    """The same objects in the same order (identity, never Tensor.__eq__)."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def check_devices(owner: str, index: int, params: list[Tensor]) -> None:
    """A group's parameters with a gradient must share one device (HVAdam's group-wide sums)."""
    devices = {p.device for p in params}
    if len(devices) > 1:
        names = ", ".join(sorted(str(d) for d in devices))
        raise ValueError(
            f"{owner}: param group {index} mixes devices ({names}); its hidden-vector step is "
            "computed over the whole group, so put each device's parameters in a group of its own"
        )


def host_scalars(values: list[float], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Host numbers as a device tensor without a blocking copy."""
    return to_device(torch.tensor(values, dtype=dtype), device)


def to_device(host: Tensor, device: torch.device) -> Tensor:
    """A host tensor on `device`, copied without blocking the host (pinned on CUDA)."""
    if device.type == "cpu":
        return host
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)
