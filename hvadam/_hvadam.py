"""HVAdam: the full-dimension adaptive optimizer (a readable reference path and a fast path)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from torch import Tensor

from hvadam import _cpu_kernel, _fastpath
from hvadam._checks import check_common, in_range, real
from hvadam._fastpath import FlatGroup, Plan, check_devices, host_scalars

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
# against docs/algorithms.md. It may synchronise (it reads the step count and the decisions on the host).
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
# Fast path: the same rule as tensor programs over each bucket's flat buffers (see _fastpath),
# with no host-device synchronisation. Per group:
#   gather: the gradients and parameters into flat work buffers (one _foreach_copy_ each);
#   (a) one pass per segment: m, s, θ updated, the sums <m̂,m̂>, <m̂,v>, <v,v> returned;
#   (b) a few scalar tensor ops: k, δ, e, n, the restart flag, b -> a decision vector;
#   (c) one pass per segment: v and θ updated as the decision says (torch.where, no `if`);
#   scatter: the parameters back (one _foreach_copy_).
# The number of operations (eager) and kernels (compiled) per step does not grow with the
# number of parameter tensors. The passes are compiled each as its own graph over 1-D buffers
# with dynamic sizes (one graph for all three allocated extra full-size temporaries); the bias
# corrections are Python floats computed from the host's step counts, so they neither read the
# device nor recompile. On a CPU, large groups run the C++ kernel (_cpu_kernel) instead: one call
# per pass over the group's tensors in place, no gather or scatter.
# ----------------------------------------------------------------------------------------------

_HP_FIELDS = _cpu_kernel.HVADAM_HP_FIELDS

_STATE = ("exp_avg", "exp_avg_var", "hidden")
_AMS_STATE = (*_STATE, "max_exp_avg_var")


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


def _first_pass(
    theta: Tensor,
    g: Tensor,
    m: Tensor,
    s: Tensor,
    v: Tensor,
    s_max: Tensor | None,
    mask: Tensor | None,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    gamma: float,
    half_adaptivity: float,
    weight_decay: float,
    bc1: float | Tensor,
    bc2: float | Tensor,
    unit: bool,
    decay: str,
    maximize: bool,
) -> Tensor:
    """Pass (a) over flat buffers: m, s (s_max), θ updated in place; returns the three sums.

    ``bc1`` = 1/(1-β1^t); ``bc2`` = 1/sqrt(1-β2^t) when ``unit`` (adaptivity 1), else
    1/(1-β2^t): numbers, or per-element tensors with ``mask`` (the masked pass: only elements
    where it is true change or count). ``decay``: "none", "coupled" or "decoupled".
    """
    cdt = torch.float32 if theta.dtype in _LOW_PRECISION else theta.dtype
    th, grad = theta.to(cdt), g.to(cdt)
    m0, s0, v_ = m.to(cdt), s.to(cdt), v.to(cdt)
    if maximize:
        grad = -grad
    if decay == "decoupled":
        th = th * (1.0 - lr * weight_decay)
    elif decay == "coupled":
        grad = grad + weight_decay * th
    m_new = beta1 * m0 + (1.0 - beta1) * grad
    p = (grad - v_) ** 2
    r = p / ((grad - m_new) ** 2 + gamma * p + eps) * p
    m_hat = m_new * bc1
    s_new = beta2 * s0 + (1.0 - beta2) * r + eps
    if mask is not None:
        zero = torch.zeros((), dtype=cdt, device=m_hat.device)
        mh_sum, v_sum = torch.where(mask, m_hat, zero), torch.where(mask, v_, zero)
    else:
        mh_sum, v_sum = m_hat, v_
    sums = torch.stack([(mh_sum * mh_sum).sum(), (mh_sum * v_sum).sum(), (v_sum * v_sum).sum()])
    s_used = s_new
    if s_max is not None:
        s_used = torch.maximum(s_max.to(cdt), s_new)
    denom = s_used.sqrt() * bc2 if unit else (s_used * bc2) ** half_adaptivity
    th_new = th - lr * m_hat / (denom + eps)
    if mask is not None:
        m_new = torch.where(mask, m_new, m0)
        s_new = torch.where(mask, s_new, s0)
        th_new = torch.where(mask, th_new, theta.to(cdt))
        if s_max is not None:
            s_used = torch.where(mask, s_used, s_max.to(cdt))
    if s_max is not None:
        s_max.copy_(s_used)
    m.copy_(m_new)
    s.copy_(s_new)
    theta.copy_(th_new)
    return sums.to(torch.float64)


def _hidden_pass(
    theta: Tensor, m: Tensor, v: Tensor, mask: Tensor | None, bc1: float | Tensor, decision: Tensor
) -> None:
    """Pass (c) over flat buffers: decision = [k, restart, hidden_step, lr*b]."""
    k, restart, hidden_step, lr_b = decision[0], decision[1], decision[2], decision[3]
    cdt = torch.float32 if theta.dtype in _LOW_PRECISION else theta.dtype
    m_hat = m.to(cdt) * bc1
    v_ = v.to(cdt)
    v_new = torch.where(
        restart > 0, m_hat, torch.where(hidden_step > 0, k * v_ + (1 - k) * m_hat, v_)
    )
    th = theta.to(cdt)
    th_new = torch.where(hidden_step > 0, th - lr_b * v_new, th)
    if mask is not None:
        v_new = torch.where(mask, v_new, v_)
        th_new = torch.where(mask, th_new, th)
    theta.copy_(th_new)
    v.copy_(v_new)


def _bounded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` over the elements [lo, hi) of whole flat buffers (its first `count` arguments).

    Compiled passes take whole buffers and integer bounds, not sliced views: a view's size and
    storage offset would be guarded on, and sizes 0 and 1 specialise.
    """
    count = 7 if fn is _first_pass else 4

    def bounded(lo: int, hi: int, *args: Any) -> Any:
        sliced = [a if a is None or a.dim() == 0 else a[lo:hi] for a in args[:count]]
        return fn(*sliced, *args[count:])

    bounded.__name__ = f"{fn.__name__}_bounded"
    return bounded


_first_bounded = _bounded(_first_pass)
_hidden_bounded = _bounded(_hidden_pass)


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


def _bias_corrections(
    steps: list[int], beta1: float, beta2: float, unit: bool
) -> tuple[list[float], list[float]]:
    """Per step count t: 1/(1-β1^t), and 1/sqrt(1-β2^t) (unit adaptivity) or 1/(1-β2^t)."""
    bc1 = [1.0 / (1.0 - beta1**t) for t in steps]
    bc2 = [1.0 / (math.sqrt(1.0 - beta2**t) if unit else 1.0 - beta2**t) for t in steps]
    return bc1, bc2


class _GroupRun:
    """A group's cached pieces between steps: its flat state and the decision's hp tensor."""

    def __init__(self, amsgrad: bool) -> None:
        self.flat = FlatGroup(_AMS_STATE if amsgrad else _STATE)
        self.amsgrad = amsgrad
        self.hp_values: tuple[float, ...] | None = None
        self.hp: Tensor | None = None
        self.bcs: Tensor | None = None

    def hyperparameters(self, group: dict[str, Any], dtype: torch.dtype, device: Any) -> Tensor:
        values = _hyperparameters(group)
        hp = self.hp
        if hp is None or values != self.hp_values or hp.dtype != dtype or hp.device != device:
            hp = self.hp = host_scalars(list(values), dtype, device)
            self.hp_values = values
        return hp


def _kernel_ready(plans: list[Plan], grads: list[list[Tensor]]) -> bool:
    """Whether the CPU kernel can take these tensors in place (contiguous, one dtype each)."""
    return all(
        p.is_contiguous() and p.dtype.is_floating_point and g.is_contiguous() and g.dtype == p.dtype
        for plan, gl in zip(plans, grads, strict=True)
        for p, g in zip(plan.params, gl, strict=True)
    )


@torch.compiler.disable
def _fast_group_step(
    group: dict[str, Any], params: list[Tensor], state: Any, gs: dict[str, Tensor], run: _GroupRun
) -> None:
    plans = run.flat.prepare(group["params"], params, state)
    device = params[0].device
    numel = sum(plan.numel for plan in plans)
    foreach = group["foreach"]
    hp = run.hyperparameters(group, gs["e"].dtype, device)
    group_state = [gs["flag"], gs["e"], gs["n"], gs["restarts"], gs["skips"], gs["hv_step"]]
    unit = group["adaptivity"] == 1.0
    amsgrad = run.amsgrad
    grads = [cast(list[Tensor], [p.grad for p in plan.params]) for plan in plans]
    if (
        _fastpath.use_cpu_kernel(device, foreach, numel)
        and hp.dtype == torch.float64
        and _kernel_ready(plans, grads)
        and (kernel := _cpu_kernel.load()) is not None
    ):
        _kernel_group_step(kernel, plans, grads, hp, group_state, unit, amsgrad, run)
        return
    compile_ = _fastpath.use_compile(device, foreach, numel)
    lr, beta1, _, beta2, _, eps, gamma, half_a, _, _, _, _, _, _ = run.hp_values or ()
    wd = float(group["weight_decay"])
    decay = "none" if wd == 0 else "decoupled" if group["decoupled_weight_decay"] else "coupled"
    maximize = group["maximize"]
    corrections: list[list[tuple[int, int, float | Tensor, float | Tensor]]] = []
    sums = None
    for plan, plan_grads in zip(plans, grads, strict=True):
        bucket = plan.bucket
        g_buf = bucket.work("grad")[0]
        th_buf = bucket.work("param")[0]
        torch._foreach_copy_(plan.views("grad"), plan_grads)
        torch._foreach_copy_(plan.views("param"), plan.params)
        state_bufs = [bucket.buffers[name] for name in _STATE]
        s_max = bucket.buffers["max_exp_avg_var"] if amsgrad else None
        pieces: list[tuple[int, int, float | Tensor, float | Tensor]]
        if plan.masked:
            plan.advance()
            bc1s, bc2s = _bias_corrections(bucket.steps, beta1, beta2, unit)
            cdt = torch.float32 if bucket.dtype in _LOW_PRECISION else bucket.dtype
            pieces = [
                (0, bucket.numel, bucket.per_element(bc1s, cdt), bucket.per_element(bc2s, cdt))
            ]
        else:
            bc1s, bc2s = _bias_corrections(plan.advance(), beta1, beta2, unit)
            pieces = [
                (lo, hi, b1, b2) for (lo, hi), b1, b2 in zip(plan.ranges, bc1s, bc2s, strict=True)
            ]
        corrections.append(pieces)
        key = ("first", device.type, bucket.dtype, amsgrad, unit, decay, maximize, plan.masked)
        for lo, hi, b1, b2 in pieces:
            args = (th_buf, g_buf, *state_bufs, s_max, plan.mask, lr, beta1, beta2, eps, gamma,
                    half_a, wd, b1, b2, unit, decay, maximize)  # fmt: skip
            part = _pass(_first_pass, _first_bounded, key, compile_, plan, lo, hi, args)
            sums = part if sums is None else sums + part
    assert sums is not None
    decision = _fastpath.run(_fast_decision, ("decision", device.type) if compile_ else None,
                             sums, hp, group_state)  # fmt: skip
    for plan, pieces in zip(plans, corrections, strict=True):
        bucket = plan.bucket
        th_buf = bucket.work("param")[0]
        m, v = bucket.buffers["exp_avg"], bucket.buffers["hidden"]
        hidden_key = ("hidden", device.type, bucket.dtype, plan.masked)
        for lo, hi, b1, _ in pieces:
            args = (th_buf, m, v, plan.mask, b1, decision)
            _pass(_hidden_pass, _hidden_bounded, hidden_key, compile_, plan, lo, hi, args)
        torch._foreach_copy_(plan.params, plan.views("param"))


def _pass(
    fn: Callable[..., Any],
    bounded: Callable[..., Any],
    key: tuple[Any, ...],
    compile_: bool,
    plan: Plan,
    lo: int,
    hi: int,
    args: tuple[Any, ...],
) -> Any:
    """One pass over [lo, hi) of the flat buffers: compiled with bounds, or eagerly on views."""
    if compile_:
        return _fastpath.run(bounded, key, lo, hi, *args)
    if plan.masked or (lo == 0 and hi == plan.bucket.numel):
        return fn(*args)
    return bounded(lo, hi, *args)


def _kernel_group_step(
    kernel: Any,
    plans: list[Plan],
    grads: list[list[Tensor]],
    hp: Tensor,
    group_state: list[Tensor],
    unit: bool,
    amsgrad: bool,
    run: _GroupRun,
) -> None:
    """The C++ CPU kernel: in place over the group's tensors, one call per pass per bucket."""
    sums = None
    bcs = []
    for plan, plan_grads in zip(plans, grads, strict=True):
        bc = torch.empty(len(plan.params), 2, dtype=torch.float64)
        part = kernel.first_pass(
            plan.params,
            plan_grads,
            *(plan.views(name) for name in _STATE),
            plan.views("max_exp_avg_var") if amsgrad else [],
            plan.step_views(),  # incremented by the kernel
            hp,
            bc,
            unit,
        )
        steps = plan.bucket.steps
        for i in plan.idx:
            steps[i] += 1
        bcs.append(bc)
        sums = part if sums is None else sums + part
    assert sums is not None
    decision = _fast_decision(sums, hp, group_state)
    for plan, bc in zip(plans, bcs, strict=True):
        kernel.hidden_pass(plan.params, plan.views("exp_avg"), plan.views("hidden"), bc, decision)


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
    decisions on the host). ``foreach=True`` or ``None`` (the default) runs the fast path, which
    never synchronises host and device during ``step`` and whose cost per step does not grow
    with the number of parameter tensors: per param group and (device, dtype) the state lives in
    flat buffers (``self.state[p]`` holds views of them, so ``state_dict()`` is unchanged), the
    gradients and parameters are gathered into two flat work buffers (twice the group's
    parameter memory, kept between steps), each pass runs once over the buffers, and the
    parameters are copied back. The passes are compiled with ``torch.compile`` on CUDA and, on a
    CPU, with ``foreach=True`` or for groups of at least 2**20 elements (the first step compiles
    three small graphs, seconds to a minute; ``HVADAM_COMPILE=0`` stays eager); smaller CPU
    groups run them eagerly. On a CPU, where a group would be compiled, a C++ kernel runs
    instead, in place and one call per pass per group (built with ``torch.utils.cpp_extension``
    at first use, then cached on disk; ``HVADAM_CPU_KERNEL=0`` uses the passes; where it cannot
    be built HVAdam warns once and uses them). See ``hvadam._fastpath`` for the layout. A param
    group's parameters must share one device (the hidden-vector step is group-wide).

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
        self.__dict__.pop("_fast_runs", None)  # the loaded state is packed at the next step
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

    def _with_grad(self, index: int, group: dict[str, Any]) -> list[Tensor]:
        """The group's parameters that have a gradient (checked: dense, real, one device)."""
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            if p.grad.is_sparse:
                raise SparseGradientError(
                    "HVAdam does not support sparse gradients; use a dense gradient"
                )
            if torch.is_complex(p):
                raise ValueError("HVAdam does not support complex parameters")
        check_devices("HVAdam", index, params)
        return params

    def _reference_items(
        self, group: dict[str, Any], params: list[Tensor]
    ) -> list[tuple[Tensor, Tensor, dict[str, Any]]]:
        items: list[tuple[Tensor, Tensor, dict[str, Any]]] = []
        for param in params:
            state = self.state[param]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
                for name in _STATE:
                    state[name] = torch.zeros_like(param, memory_format=torch.preserve_format)
            if group["amsgrad"] and "max_exp_avg_var" not in state:
                state["max_exp_avg_var"] = torch.zeros_like(
                    param, memory_format=torch.preserve_format
                )
            items.append((param, cast(Tensor, param.grad), state))
        return items

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimisation step; `closure` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            params = self._with_grad(index, group)
            if not params:
                continue
            gs = self._group_state(group, params[0].device)
            if group["foreach"] is False:
                # The reference path changes the state on its own: the fast path's host copy of
                # the step counts is dropped and packed again from the state when it next runs.
                self.__dict__.get("_fast_runs", {}).pop(id(group), None)
                _reference_group_step(group, self._reference_items(group, params), gs)
            else:
                _fast_group_step(group, params, self.state, gs, self._fast_run(group))
        return loss

    def _fast_run(self, group: dict[str, Any]) -> _GroupRun:
        # Kept out of the param group (so out of state_dict) and rebuilt after unpickling.
        runs = self.__dict__.setdefault("_fast_runs", {})
        entry = runs.get(id(group))
        if entry is None or entry[0] is not group or entry[1].amsgrad != group["amsgrad"]:
            entry = runs[id(group)] = (group, _GroupRun(group["amsgrad"]))
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
