"""HVAdam: the full-dimension adaptive optimizer (a readable reference path and a fast path)."""

from __future__ import annotations

import math
import os
import types
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from hvadam import _cpu_kernel
from hvadam._checks import check_common, in_range, real

__all__ = ["HVAdam"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class SparseGradientError(ValueError, RuntimeError):
    """HVAdam was given a sparse gradient, which it does not support."""


def _check_hyperparameters(group: dict[str, Any]) -> None:
    """Raise ValueError naming the hyperparameter and its allowed range."""
    check_common("HVAdam", group, flags=("decoupled_weight_decay", "amsgrad", "maximize"))
    in_range("HVAdam", "gamma", group["gamma"], 0.0, math.inf)
    threshold = real("HVAdam", "restart_threshold", group["restart_threshold"])
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"HVAdam: restart_threshold must be in [-1, 1], got {threshold}")
    hv_range = group["hv_step_range"]
    if not isinstance(hv_range, (tuple, list)) or len(hv_range) != 2:
        raise ValueError(f"HVAdam: hv_step_range must be a pair (lo, hi), got {hv_range!r}")
    lo, hi = (real("HVAdam", f"hv_step_range[{i}]", bound) for i, bound in enumerate(hv_range))
    for i, bound in enumerate((lo, hi)):
        if math.isnan(bound):
            raise ValueError(f"HVAdam: hv_step_range[{i}] must be a number, not NaN")
    if not (0.0 < lo < hi < math.inf):
        raise ValueError(f"HVAdam: hv_step_range must satisfy 0 < lo < hi < inf, got ({lo}, {hi})")


# ----------------------------------------------------------------------------------------------
# Reference path: one pure function per tensor, plain math with Python numbers, easy to hold
# against ALGORITHMS.md. It may synchronise (it reads the step count and the decisions on the host).
# ----------------------------------------------------------------------------------------------


def _reference_first_update(
    param: Tensor,
    grad: Tensor,
    m: Tensor,
    s: Tensor,
    v: Tensor,
    s_max: Tensor | None,
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    gamma: float,
    adaptivity: float,
    weight_decay: float,
    decoupled: bool,
    maximize: bool,
) -> tuple[Tensor, float, float, float]:
    """Update m, s (and s_max) and θ in place; return (m̂, <m̂,m̂>, <m̂,v>, <v,v>)."""
    # Low-precision parameters are computed in float32 and rounded when stored.
    cdt = torch.float32 if param.dtype in _LOW_PRECISION else param.dtype
    theta, g = param.to(cdt), grad.to(cdt)
    m_, s_, v_ = m.to(cdt), s.to(cdt), v.to(cdt)
    if maximize:
        g = -g
    if decoupled:
        theta = theta * (1.0 - lr * weight_decay)
    else:
        g = g + weight_decay * theta  # a new tensor: the caller's gradient is left alone
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    m_ = beta1 * m_ + (1.0 - beta1) * g
    p = (g - v_) ** 2
    r = p / ((g - m_) ** 2 + gamma * p + eps) * p
    m_hat = m_ / bc1
    s_ = beta2 * s_ + (1.0 - beta2) * r
    mm = float(torch.sum(m_hat * m_hat))
    ml = float(torch.sum(m_hat * v_))
    ll = float(torch.sum(v_ * v_))
    s_ = s_ + eps
    s_used = s_
    if s_max is not None:
        s_used = torch.maximum(s_max.to(cdt), s_)
        s_max.copy_(s_used)
    if adaptivity == 1.0:
        denom = s_used.sqrt() / math.sqrt(bc2) + eps
    else:
        denom = (s_used / bc2) ** (adaptivity / 2.0) + eps
    theta = theta - lr * m_hat / denom
    m.copy_(m_)
    s.copy_(s_)
    param.copy_(theta)
    return m_hat, mm, ml, ll


def _reference_hidden_update(
    param: Tensor, v: Tensor, m_hat: Tensor, *, action: str, k: float, lr: float, b: float
) -> None:
    """Apply the group's decision to one parameter: restart, hidden-vector step, or nothing."""
    if action == "restart":
        v.copy_(m_hat)
    elif action == "step":
        v_new = k * v.to(m_hat.dtype) + (1.0 - k) * m_hat
        v.copy_(v_new)
        param.copy_(param.to(m_hat.dtype) - (lr * b) * v_new)


def _reference_decision(
    mm: float, ml: float, ll: float, gs: dict[str, Tensor], group: dict[str, Any]
) -> tuple[str, float, float]:
    """The group's decision from the group-wide sums; updates the group state; (action, k, b)."""
    beta2 = group["betas"][1]
    lo, hi = group["hv_step_range"]
    den = mm + ll - 2.0 * ml
    k = (mm - ml) / den if den != 0.0 else 0.0
    if bool(gs["flag"]):
        gs["n"].fill_(0.0)
        gs["e"].fill_(0.0)
        gs["flag"].fill_(False)
        return "restart", k, 0.0
    vv = abs(k * k * ll + (1.0 - k) ** 2 * mm + 2.0 * k * (1.0 - k) * ml)
    if vv * mm == 0.0:  # deviation: the published code divides by zero here
        gs["skips"].add_(1.0)
        return "skip", k, 0.0
    delta = (k * ml + (1.0 - k) * mm) / math.sqrt(vv * mm)
    if not abs(delta) <= 1.0:
        gs["skips"].add_(1.0)
        return "skip", k, 0.0
    e = beta2 * float(gs["e"]) + (1.0 - beta2) * delta
    n = float(gs["n"]) + 1.0
    gs["e"].fill_(e)
    gs["n"].fill_(n)
    if e / (1.0 - beta2**n) < group["restart_threshold"]:
        gs["flag"].fill_(True)
        gs["restarts"].add_(1.0)
        return "skip", k, 0.0
    b = lo ** (1.0 - e) * hi**e
    gs["hv_step"].fill_(b)
    return "step", k, b


def _reference_group_step(
    group: dict[str, Any], items: list[tuple[Tensor, Tensor, dict[str, Any]]], gs: dict[str, Tensor]
) -> None:
    beta1, beta2 = group["betas"]
    hyper = {
        "lr": group["lr"],
        "beta1": beta1,
        "beta2": beta2,
        "eps": group["eps"],
        "gamma": group["gamma"],
        "adaptivity": group["adaptivity"],
        "weight_decay": group["weight_decay"],
        "decoupled": group["decoupled_weight_decay"],
        "maximize": group["maximize"],
    }
    mm = ml = ll = 0.0
    m_hats = []
    for param, grad, state in items:
        state["step"].add_(1.0)
        m_hat, a, b, c = _reference_first_update(
            param,
            grad,
            state["exp_avg"],
            state["exp_avg_var"],
            state["hidden"],
            state.get("max_exp_avg_var"),
            step=int(state["step"].item()),
            **hyper,
        )
        m_hats.append(m_hat)
        mm, ml, ll = mm + a, ml + b, ll + c
    action, k, b = _reference_decision(mm, ml, ll, gs, group)
    for (param, _, state), m_hat in zip(items, m_hats, strict=True):
        _reference_hidden_update(
            param, state["hidden"], m_hat, action=action, k=k, lr=group["lr"], b=b
        )


# ----------------------------------------------------------------------------------------------
# Fast path: the same rule as tensor programs with no host-device synchronisation. Per group:
#   (a) one pass per parameter: m, s, θ updated, partial sums <m̂,m̂>, <m̂,v>, <v,v> returned;
#   (b) a few scalar tensor ops: k, δ, e, n, the restart flag, b -> a decision vector;
#   (c) one pass per parameter: v and θ updated as the decision says (torch.where, no `if`).
# Passes (a) and (c) are compiled with torch.compile (one fused C++/Triton kernel per tensor,
# shapes dynamic, so a model compiles each pass once); without a working compiler, and by default
# for small groups on a CPU (_COMPILE_MIN_NUMEL), they run eagerly.
# Scalars travel as tensors: hp (layout _HP_FIELDS), rebuilt only when the group's Python
# hyperparameters change (an LR schedule, say), and decision = [k, restart, hidden_step, lr*b].
# The group's flattened tensor lists are cached between steps (_GroupCache).
#
# Measured and rejected: compiling a whole group (passes a, b, c over the lists of tensors) as
# one graph. On a CPU inductor fuses the per-tensor loops horizontally (they share the hp reads)
# into a few huge kernels: ResNet-18's 62 tensors took 11 minutes to compile and 400 ms a step.
# ----------------------------------------------------------------------------------------------

_HP_FIELDS = _cpu_kernel.HVADAM_HP_FIELDS

# With foreach=None, groups below this many elements on a CPU run the fast path eagerly: compiling
# takes seconds to a minute, more than a small model's (a 2-D valley, a small MLP) whole run saves.
_COMPILE_MIN_NUMEL = 1 << 20


def _hyperparameters(group: dict[str, Any]) -> tuple[float, ...]:
    """The group's scalars in the layout of _HP_FIELDS (Python numbers: no device access)."""
    lr = float(group["lr"])
    beta1, beta2 = (float(b) for b in group["betas"])
    wd = float(group["weight_decay"])
    decoupled = group["decoupled_weight_decay"]
    lo, hi = (float(x) for x in group["hv_step_range"])
    return (
        lr,
        beta1,
        1.0 - beta1,
        beta2,
        1.0 - beta2,
        float(group["eps"]),
        float(group["gamma"]),
        float(group["adaptivity"]) / 2.0,
        0.0 if decoupled else wd,
        1.0 - lr * wd if decoupled else 1.0,
        -1.0 if group["maximize"] else 1.0,
        float(group["restart_threshold"]),
        lo,
        hi,
    )


def _fast_first_update(
    param: Tensor,
    grad: Tensor,
    m: Tensor,
    s: Tensor,
    v: Tensor,
    s_max: Tensor | None,
    hp: Tensor,
    bc: Tensor,
    unit_adaptivity: bool,
) -> Tensor:
    lr, beta1, one_minus_beta1, beta2, one_minus_beta2 = hp[0], hp[1], hp[2], hp[3], hp[4]
    eps, gamma, half_adaptivity, wd_coupled, decay, sign = (
        hp[5], hp[6], hp[7], hp[8], hp[9], hp[10],
    )  # fmt: skip
    cdt = torch.float32 if param.dtype in _LOW_PRECISION else param.dtype
    theta, g = param.to(cdt), grad.to(cdt)
    m_, s_, v_ = m.to(cdt), s.to(cdt), v.to(cdt)
    g = g * sign
    theta = theta * decay  # decoupled weight decay: 1 - lr*wd
    g = g + wd_coupled * theta
    m_ = beta1 * m_ + one_minus_beta1 * g
    p = (g - v_) ** 2
    r = p / ((g - m_) ** 2 + gamma * p + eps) * p
    m_hat = m_ * bc[0]  # 1 / (1 - beta1^t): a multiply, not a divide, per element
    s_ = beta2 * s_ + one_minus_beta2 * r
    sums = torch.stack([(m_hat * m_hat).sum(), (m_hat * v_).sum(), (v_ * v_).sum()])
    s_ = s_ + eps
    s_used = s_
    if s_max is not None:
        s_used = torch.maximum(s_max.to(cdt), s_)
        s_max.copy_(s_used)
    if unit_adaptivity:
        denom = s_used.sqrt() * bc[1] + eps  # bc[1] = 1 / sqrt(1 - beta2^t)
    else:
        denom = (s_used * bc[1]) ** half_adaptivity + eps  # bc[1] = 1 / (1 - beta2^t)
    theta = theta - lr * m_hat / denom
    m.copy_(m_)
    s.copy_(s_)
    param.copy_(theta)
    return sums.to(hp.dtype)


def _fast_hidden_update(param: Tensor, m: Tensor, v: Tensor, bc: Tensor, decision: Tensor) -> None:
    k, restart, hidden_step, lr_b = decision[0], decision[1], decision[2], decision[3]
    cdt = torch.float32 if param.dtype in _LOW_PRECISION else param.dtype
    m_hat = m.to(cdt) * bc[0]
    v_ = v.to(cdt)
    v_new = torch.where(
        restart > 0, m_hat, torch.where(hidden_step > 0, k * v_ + (1 - k) * m_hat, v_)
    )
    theta = param.to(cdt)
    param.copy_(torch.where(hidden_step > 0, theta - lr_b * v_new, theta))
    v.copy_(v_new)


def _fast_decision(sums: Tensor, hp: Tensor, gs: list[Tensor]) -> Tensor:
    """Pass (b): the group's decision as a tensor [k, restart, hidden_step, lr*b]; no sync."""
    flag, e, n, restarts, skips, hv_step = gs
    lr, beta2, one_minus_beta2, threshold, lo, hi = hp[0], hp[3], hp[4], hp[11], hp[12], hp[13]
    mm, ml, ll = sums[0], sums[1], sums[2]
    den = mm + ll - 2.0 * ml
    k = torch.where(den != 0, (mm - ml) / torch.where(den != 0, den, 1.0), 0.0)
    restart = flag.clone()  # the flag is overwritten below
    vv = torch.abs(k * k * ll + (1.0 - k) ** 2 * mm + 2.0 * k * (1.0 - k) * ml)
    vvmm = vv * mm
    delta = (k * ml + (1.0 - k) * mm) / torch.sqrt(torch.where(vvmm > 0, vvmm, 1.0))
    # VV*MM == 0 or |δ| > 1 (or NaN): skip. NaN compares False, so it skips too.
    valid = ~restart & (vvmm > 0) & (torch.abs(delta) <= 1.0)
    e_new = beta2 * e + one_minus_beta2 * delta
    n_new = n + 1.0
    trigger = valid & (e_new / (1.0 - beta2**n_new) < threshold)
    hidden_step = valid & ~trigger
    b = lo ** (1.0 - e_new) * hi**e_new
    zero = torch.zeros_like(e)
    e.copy_(torch.where(restart, zero, torch.where(valid, e_new, e)))
    n.copy_(torch.where(restart, zero, torch.where(valid, n_new, n)))
    restarts.add_(trigger.to(restarts.dtype))
    skips.add_((~restart & ~valid).to(skips.dtype))
    hv_step.copy_(torch.where(hidden_step, b, hv_step))
    flag.copy_(trigger)
    dt = e.dtype
    return torch.stack([k, restart.to(dt), hidden_step.to(dt), lr * b])


# How the fast path runs: "auto" compiles where torch.compile works (see HVAdam's docstring),
# "eager" never compiles (HVADAM_COMPILE=0 selects it too).
_COMPILE_MODE = "eager" if os.environ.get("HVADAM_COMPILE", "1") == "0" else "auto"
# On a CPU the fast path runs a C++ extension (_cpu_kernel: one call per pass per group) unless
# HVADAM_CPU_KERNEL=0 or it cannot be built; then the passes above run (compiled or eager).
_CPU_KERNEL_MODE = "off" if os.environ.get("HVADAM_CPU_KERNEL", "1") == "0" else "auto"
_compiled: dict[tuple, Callable[..., Any]] = {}
_compile_broken: set[str] = set()
_compiled_ok: set[tuple] = set()


def _compiled_variant(fn: Callable[..., Any], key: tuple) -> Callable[..., Any]:
    """torch.compile `fn` for one variant (dtypes, device, static flags, number of tensors).

    torch.compile caches graphs per code object with a small recompile limit; giving each
    variant its own code object keeps variants (float32/float64/bfloat16, amsgrad, models with
    different numbers of tensors, ...) from evicting each other into eager fallback.
    """
    compiled = _compiled.get(key)
    if compiled is None:
        name = f"{fn.__name__}_{abs(hash(key)):x}"
        code = fn.__code__.replace(co_name=name, co_qualname=name)
        clone = types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
        compiled = torch.compile(clone, dynamic=True, fullgraph=True)
        _compiled[key] = compiled
    return compiled


def _run_pass(fn: Callable[..., Any], key: tuple, *args: Any) -> Any:
    device_type = args[0].device.type
    if (
        _COMPILE_MODE == "eager"
        or device_type in _compile_broken
        or device_type not in ("cpu", "cuda")
        or torch.compiler.is_compiling()
    ):
        return fn(*args)
    compiled = _compiled_variant(fn, key)
    if key in _compiled_ok:
        return compiled(*args)
    try:
        # Compile on large stand-ins first: shapes are dynamic and the first shape seen is the
        # size hint from which the C++ backend decides to parallelise the loop.
        compiled(*[_stand_in(a, args[0]) for a in args])
        result = compiled(*args)
    except Exception as error:  # a missing C++ compiler, an unsupported platform, ...
        # Compilation happens before the graph runs, so no tensor was touched yet; an error of
        # the update itself recurs in the eager call below and reaches the caller.
        _compile_broken.add(device_type)
        warnings.warn(
            f"HVAdam: torch.compile failed on {device_type} ({type(error).__name__}: "
            f"{str(error)[:200]}); using the eager fast path",
            RuntimeWarning,
            stacklevel=3,
        )
        return fn(*args)
    _compiled_ok.add(key)
    return result


def _stand_in(arg: Any, param: Tensor) -> Any:
    """A large zero tensor in place of a flattened parameter-sized argument."""
    if (
        isinstance(arg, Tensor)
        and param.dim() == 1
        and arg.shape == param.shape
        and param.numel() > 1
    ):
        return torch.zeros(1 << 20, dtype=arg.dtype, device=arg.device)
    return arg


def _flat(t: Tensor, strides: tuple[int, ...]) -> Tensor | None:
    """A 1-D view of a dense tensor laid out like `strides`, or None when there is none."""
    if t.stride() != strides:
        return None
    # Detached, so that torch.compile sees plain tensors, not no-grad views of leaves.
    t = t.detach()
    if t.is_contiguous():
        return t.view(-1)
    order = sorted(range(t.dim()), key=lambda d: -t.stride(d))
    permuted = t.permute(order)
    return permuted.view(-1) if permuted.is_contiguous() else None


def _same(a: list[Any], b: list[Any]) -> bool:
    """The same objects in the same order (identity, never Tensor.__eq__)."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


class _GroupCache:
    """A group's flattened tensor lists and hp tensor, reused while the same objects recur.

    Rebuilt when the parameters with a gradient, a gradient or a state tensor (a loaded state
    dict) changes; hp is rebuilt only when the group's Python hyperparameters change.
    """

    def __init__(self) -> None:
        self.keys: list[Any] = []
        self.grad_keys: list[Any] = []
        self.lists: list[list[Tensor]] = []
        self.grads: list[Tensor] = []
        self.hp_values: tuple[float, ...] | None = None
        self.hp: Tensor | None = None
        self.numel = 0
        self.kernel_ok = False  # the lists suit the CPU kernel (contiguous, one dtype each)
        self.bcs: Tensor | None = None

    def update(
        self, items: list[tuple[Tensor, Tensor, dict[str, Any]]], amsgrad: bool
    ) -> list[list[Tensor]]:
        keys = []
        for param, _, state in items:
            keys += (param, state["exp_avg"], state["exp_avg_var"], state["hidden"], state["step"])
            if amsgrad:
                keys.append(state["max_exp_avg_var"])
        grad_keys = [grad for _, grad, _ in items]
        if _same(keys, self.keys) and _same(grad_keys, self.grad_keys):
            return self.lists
        lists: list[list[Tensor]] = [[] for _ in range(7)]
        for param, grad, state in items:
            tensors = [param, grad, state["exp_avg"], state["exp_avg_var"], state["hidden"]]
            if amsgrad:
                tensors.append(state["max_exp_avg_var"])
            flat = [_flat(t, param.stride()) for t in tensors]
            if any(f is None for f in flat):
                flat = [t.detach() for t in tensors]  # an unusual layout: not flattened
            for out, f in zip(lists, flat, strict=False):
                out.append(f)
            lists[6].append(state["step"])
        self.keys, self.grad_keys, self.lists = keys, grad_keys, lists
        self.numel = sum(p.numel() for p in lists[0])
        self.kernel_ok = all(
            t.device.type == "cpu"
            and t.is_contiguous()
            and t.dtype == param.dtype
            and t.numel() == param.numel()
            and param.dtype.is_floating_point
            for i, param in enumerate(lists[0])
            for t in [lists[j][i] for j in range(6) if lists[j]]
        ) and all(t.dtype == torch.float32 and t.numel() == 1 for t in lists[6])
        self.bcs = None
        return lists

    def hyperparameters(self, group: dict[str, Any], dtype: torch.dtype, device: Any) -> Tensor:
        values = _hyperparameters(group)
        hp = self.hp
        if hp is None or values != self.hp_values or hp.dtype != dtype or hp.device != device:
            hp = self.hp = _scalars(list(values), dtype, device)
            self.hp_values = values
        return hp


def _fast_group_step(
    group: dict[str, Any],
    items: list[tuple[Tensor, Tensor, dict[str, Any]]],
    gs: dict[str, Tensor],
    cache: _GroupCache,
) -> None:
    device = items[0][0].device
    amsgrad = group["amsgrad"]
    unit = group["adaptivity"] == 1.0
    params, grads, ms, ss, vs, s_maxs, steps = cache.update(items, amsgrad)
    hp = cache.hyperparameters(group, gs["e"].dtype, device)
    group_state = [gs["flag"], gs["e"], gs["n"], gs["restarts"], gs["skips"], gs["hv_step"]]
    if (
        device.type == "cpu"
        and _CPU_KERNEL_MODE == "auto"
        and cache.kernel_ok
        # Like compiling: the one-off build pays off for large groups, or when asked for.
        and (group["foreach"] is True or cache.numel >= _COMPILE_MIN_NUMEL)
        and hp.dtype == torch.float64
        and (kernel := _cpu_kernel.load()) is not None
    ):
        if cache.bcs is None:
            cache.bcs = torch.empty(len(params), 2, dtype=torch.float64)
        sums = kernel.first_pass(
            params, grads, ms, ss, vs, s_maxs if amsgrad else [], steps, hp, cache.bcs, unit
        )
        kernel.hidden_pass(params, ms, vs, cache.bcs, _fast_decision(sums, hp, group_state))
        return
    compile_ = _COMPILE_MODE == "auto"
    if group["foreach"] is None:
        compile_ = compile_ and (device.type == "cuda" or cache.numel >= _COMPILE_MIN_NUMEL)
    run = _run_pass if compile_ else _run_eager
    torch._foreach_add_(steps, 1.0)
    # Bias corrections of every parameter at once (the step counts may differ).
    t = torch.stack(steps).to(hp.dtype)
    bc2 = 1.0 - hp[3] ** t
    columns = [1.0 / (1.0 - hp[1] ** t), 1.0 / (bc2.sqrt() if unit else bc2)]
    # One small tensor per parameter (clones: row views' storage offsets would be guarded on).
    bcs = [row.clone() for row in torch.stack(columns, 1).unbind(0)]
    first_key = ("first", device.type, amsgrad, unit)
    partial = [
        run(_fast_first_update, (*first_key, param.dtype), param, grad, m, s, v,
            s_maxs[i] if amsgrad else None, hp, bc, unit)
        for i, (param, grad, m, s, v, bc) in enumerate(zip(params, grads, ms, ss, vs, bcs, strict=True))
    ]  # fmt: skip
    decision = _fast_decision(torch.stack(partial).sum(0), hp, group_state)
    for param, m, v, bc in zip(params, ms, vs, bcs, strict=True):
        run(_fast_hidden_update, ("hidden", param.dtype, device.type), param, m, v, bc, decision)


def _run_eager(fn: Callable[..., Any], key: tuple, *args: Any) -> Any:
    return fn(*args)


def _scalars(values: list[float], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Host numbers as a device tensor without a blocking copy."""
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cpu":
        return host
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


class HVAdam(torch.optim.Optimizer):
    r"""HVAdam: Adam with a noise-aware preconditioner and a group-wide hidden-vector step.

    For each parameter group, at step :math:`t` (per parameter, :math:`b_1 = 1-\beta_1^t`,
    :math:`b_2 = 1-\beta_2^t`), with gradient :math:`g` (negated when ``maximize``; coupled weight
    decay adds :math:`\lambda\theta`, decoupled scales :math:`\theta \leftarrow (1-\eta\lambda)\theta`):

    .. math::
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad p = (g - v)^2, \\
        s &\leftarrow \beta_2 s + (1-\beta_2)\,\frac{p^2}{(g-m)^2 + \gamma p + \epsilon},
        \qquad \hat m = m / b_1, \\
        MM &= \textstyle\sum \langle\hat m,\hat m\rangle,\quad
        ML = \sum \langle\hat m, v\rangle,\quad LL = \sum\langle v, v\rangle
        \quad\text{(over all parameters of the group)}, \\
        s &\leftarrow s + \epsilon\ \ (\text{amsgrad: } \hat s = \max(\hat s, s)), \qquad
        \theta \leftarrow \theta - \eta\,\frac{\hat m}{(s/b_2)^{a/2} + \epsilon}.

    Then, once per group, :math:`k = (MM-ML)/(MM+LL-2ML)` (0 when the denominator is 0).
    If a restart is pending: :math:`e = n = 0`, :math:`v \leftarrow \hat m`. Otherwise

    .. math::
        VV &= |k^2 LL + (1-k)^2 MM + 2k(1-k) ML|, \qquad
        \delta = \frac{k\,ML + (1-k)\,MM}{\sqrt{VV\cdot MM}}, \\
        &\text{skip if } |\delta| > 1 \text{ or } VV\cdot MM = 0;\quad
        e \leftarrow \beta_2 e + (1-\beta_2)\delta,\ n \leftarrow n + 1, \\
        &\text{restart next step (and skip) if } e/(1-\beta_2^n) < \tau, \text{ else }
        b = \ell^{1-e} h^{e},\ v \leftarrow k v + (1-k)\hat m,\ \theta \leftarrow \theta - \eta b v.

    Here :math:`\eta` = ``lr``, :math:`a` = ``adaptivity`` (1 is published HVAdam),
    :math:`\tau` = ``restart_threshold``, :math:`(\ell, h)` = ``hv_step_range``; a restart is
    pending at the first step. Every hyperparameter can be overridden per parameter group.

    Deviations from the published code: ``VV*MM == 0`` skips instead of producing NaN; coupled
    weight decay never modifies ``p.grad``; no RAdam (rectify) branch.

    ``foreach=False`` runs the readable reference (one pure function per tensor; it reads
    decisions on the host). ``foreach=True`` runs the fast path, which never synchronises host
    and device during ``step`` and is compiled with ``torch.compile`` where available (the
    first step compiles two small kernels per dtype, seconds to a minute on a CPU; set
    ``HVADAM_COMPILE=0`` to stay eager). ``foreach=None`` (the default) runs the fast path,
    compiled on CUDA and for groups of at least 2**20 elements, eagerly for smaller groups on a
    CPU (where compiling costs more than a small model's whole run saves). On a CPU, where a
    group would be compiled (``foreach=True``, or ``None`` and at least 2**20 elements), a C++
    kernel runs instead that does each pass over a whole group in one call (built with
    ``torch.utils.cpp_extension`` at first use, about a minute, then cached on disk; set
    ``HVADAM_CPU_KERNEL=0`` to use the passes above; where it cannot be built HVAdam warns once
    and uses them).

    Group-level state lives in ``param_group["hv_state"]`` (so ``state_dict()`` carries it):
    ``flag`` (restart pending), ``e`` (cosine average), ``n`` (its count), and for diagnostics
    ``restarts`` (restarts triggered), ``skips`` (steps skipped for ``|δ| > 1`` or
    ``VV*MM == 0``) and ``hv_step`` (the last b).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        gamma: float = 0.0,
        adaptivity: float = 1.0,
        restart_threshold: float = 0.1,
        hv_step_range: tuple[float, float] = (1e-3, 1e3),
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        amsgrad: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": tuple(betas) if isinstance(betas, list) else betas,
            "eps": eps,
            "gamma": gamma,
            "adaptivity": adaptivity,
            "restart_threshold": restart_threshold,
            "hv_step_range": (
                tuple(hv_step_range) if isinstance(hv_step_range, list) else hv_step_range
            ),
            "weight_decay": weight_decay,
            "decoupled_weight_decay": decoupled_weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
        }
        _check_hyperparameters(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        _check_hyperparameters(self.param_groups[-1])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.__dict__.pop("_fast_caches", None)
        # Keep every scalar on its parameters' device so the fast path never crosses devices.
        for group in self.param_groups:
            params = group["params"]
            for param in params:
                state = self.state.get(param)
                if state and "step" in state:
                    state["step"] = state["step"].to(device=param.device, dtype=torch.float32)
            gs = group.get("hv_state")
            if gs is not None and params:
                device = params[0].device
                group["hv_state"] = {name: t.to(device) for name, t in gs.items()}

    def _group_state(self, group: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
        gs = group.get("hv_state")
        if gs is None:
            dtype = torch.float32 if device.type == "mps" else torch.float64
            gs = {
                "flag": torch.ones((), dtype=torch.bool, device=device),
                "e": torch.zeros((), dtype=dtype, device=device),
                "n": torch.zeros((), dtype=dtype, device=device),
                "restarts": torch.zeros((), dtype=dtype, device=device),
                "hv_step": torch.zeros((), dtype=dtype, device=device),
                "skips": torch.zeros((), dtype=dtype, device=device),
            }
            group["hv_state"] = gs
        return gs

    def _items(self, group: dict[str, Any]) -> list[tuple[Tensor, Tensor, dict[str, Any]]]:
        items = []
        for param in group["params"]:
            if param.grad is None:
                continue
            grad = param.grad
            if grad.is_sparse:
                raise SparseGradientError(
                    "HVAdam does not support sparse gradients; use a dense gradient"
                )
            state = self.state[param]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_var"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["hidden"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            if group["amsgrad"] and "max_exp_avg_var" not in state:
                state["max_exp_avg_var"] = torch.zeros_like(
                    param, memory_format=torch.preserve_format
                )
            items.append((param, grad, state))
        return items

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimisation step; `closure` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            items = self._items(group)
            if not items:
                continue
            gs = self._group_state(group, items[0][0].device)
            if group["foreach"] is False:
                _reference_group_step(group, items, gs)
            else:
                _fast_group_step(group, items, gs, self._fast_cache(group))
        return loss

    def _fast_cache(self, group: dict[str, Any]) -> _GroupCache:
        # Kept out of the param group (so out of state_dict) and rebuilt after unpickling.
        caches = self.__dict__.setdefault("_fast_caches", {})
        entry = caches.get(id(group))
        if entry is None or entry[0] is not group:
            entry = caches[id(group)] = (group, _GroupCache())
        return entry[1]

    def internals(self) -> dict[str, float]:
        """Diagnostics (synchronises; call between epochs, not inside step).

        ``restarts``: restarts triggered so far, summed over groups; ``hv_step``: the last
        hidden-vector step multiplier b, mean over groups; ``cosine_avg``: the bias-corrected
        average cosine e/(1-β2^n) (0 before any), mean over groups.
        """
        restarts, hv_steps, cosines = 0.0, [], []
        for group in self.param_groups:
            gs = group.get("hv_state")
            if gs is None:
                hv_steps.append(0.0)
                cosines.append(0.0)
                continue
            restarts += float(gs["restarts"])
            hv_steps.append(float(gs["hv_step"]))
            n = float(gs["n"])
            beta2 = group["betas"][1]
            cosines.append(float(gs["e"]) / (1.0 - beta2**n) if n > 0 else 0.0)
        count = max(len(hv_steps), 1)
        return {
            "restarts": restarts,
            "hv_step": sum(hv_steps) / count,
            "cosine_avg": sum(cosines) / count,
        }
