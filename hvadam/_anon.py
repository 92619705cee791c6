"""Anon: Adam-style momentum with a tunable-adaptivity preconditioner refreshed by delayed merges (IDU)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from hvadam import _cpu_kernel
from hvadam._checks import check_common, in_range

__all__ = ["Anon", "anon_foreach", "anon_reference"]

REFRESH_SCHEDULES = ("doubling", "every")

# The compiled fused step pays a one-off compile (seconds) per parameter layout; below this many
# elements per bucket the eager multi-tensor path is as fast and never compiles.
COMPILE_MIN_NUMEL = 1 << 20

# Set HVADAM_COMPILE=0 to never use torch.compile (for example where no C++ compiler exists).
_compile_state: dict[str, Any] = {"available": os.environ.get("HVADAM_COMPILE", "1") != "0"}


class Anon(Optimizer):
    r"""Anon (Zhang et al., "Anon: Extrapolating Adaptivity Beyond SGD and Adam").

    For each parameter :math:`\theta` with gradient :math:`g_t` at step :math:`t`
    (:math:`\lambda` = ``weight_decay``, :math:`a` = ``adaptivity``, :math:`\beta_3` = ``idu_beta``):

    .. math::
        \begin{aligned}
        & g_t \leftarrow -g_t \quad\text{if maximize} \\
        & g_t \leftarrow g_t + \lambda \theta_{t-1} \quad\text{(coupled decay), or }
          \theta_{t-1} \leftarrow (1 - \eta\lambda)\,\theta_{t-1} \quad\text{(decoupled)} \\
        & m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t \\
        & s_t = \beta_2 s_{t-1} + (1-\beta_2) g_t^2 \\
        & \text{if } t \text{ is a refresh step (doubling: } t = 1, 2, 4, 8, \dots\text{; every: all } t\text{):} \\
        & \qquad L = t - t_{\text{last refresh}}, \qquad
          \sigma = \bigl(s_t / (1 - \beta_2^{L}) + \epsilon\bigr)^{a} \\
        & \qquad P^{-2} \leftarrow \sigma \quad\text{(first refresh)}, \qquad
          P^{-2} \leftarrow \beta_3 P^{-2} + (1-\beta_3)\,\sigma \quad\text{(later refreshes)} \\
        & \qquad s_t \leftarrow 0 \\
        & \theta_t = \theta_{t-1} - \frac{\eta}{1 - \beta_1^t}\, m_t \odot P
        \end{aligned}

    ``idu_beta=0.5`` with ``refresh="doubling"`` is the published rule
    :math:`P = ((P^{-2} + \sigma)/2)^{-1/2}`; ``adaptivity=0`` gives :math:`P = 1`, SGD with EMA
    momentum and bias correction; ``adaptivity=1`` is Adam-like; values above 1 or below 0
    extrapolate.

    State per parameter: ``m``, ``s``, ``P`` (three parameter-sized tensors), ``step`` (a CPU
    tensor, as in ``torch.optim.Adam``), and two host integers, ``last_refresh`` (the step of the
    latest refresh, 0 before the first) and ``refreshes`` (how many so far). Whether a step
    refreshes depends only on these host counters, so deciding it never waits on the device.

    ``foreach``: ``False`` runs :func:`anon_reference` tensor by tensor; ``True`` runs the eager
    multi-tensor :func:`anon_foreach`; ``None`` (default) picks the fastest: on CPU, buckets of at
    least ``COMPILE_MIN_NUMEL`` elements run a ``torch.compile``'d step that fuses the moment and
    parameter updates into one pass (compiled once per parameter layout; refresh steps of the
    doubling schedule run eagerly), everything else runs :func:`anon_foreach`. Compiling takes
    seconds (tens of seconds for a large model on a busy CPU; the first compile on a machine
    longer), once per process and layout. If compiling fails the optimizer warns once and stays on
    the eager path; ``HVADAM_COMPILE=0`` in the environment turns compiling off. On other devices
    (CUDA) the default is the eager multi-tensor path, which never synchronises with the host.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        adaptivity: float = 0.0,
        idu_beta: float = 0.5,
        refresh: str = "doubling",
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": tuple(betas) if isinstance(betas, list) else betas,
            "eps": eps,
            "adaptivity": adaptivity,
            "idu_beta": idu_beta,
            "refresh": refresh,
            "weight_decay": weight_decay,
            "decoupled_weight_decay": decoupled_weight_decay,
            "maximize": maximize,
            "foreach": foreach,
        }
        _validate(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # Validate every group's effective hyperparameters, not only the defaults, so that a
        # per-group override is checked as strictly as a constructor argument.
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        if isinstance(merged.get("betas"), list):
            merged["betas"] = param_group["betas"] = tuple(merged["betas"])
        _validate(merged)
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def internals(self) -> dict[str, float]:
        """Diagnostics: ``refreshes``, the number of preconditioner refreshes so far (max over
        parameters)."""
        counts = [state.get("refreshes", 0) for state in self.state.values()]
        return {"refreshes": float(max(counts, default=0))}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            hyper = {
                "lr": group["lr"],
                "beta1": beta1,
                "beta2": beta2,
                "eps": group["eps"],
                "adaptivity": group["adaptivity"],
                "idu_beta": group["idu_beta"],
                "weight_decay": group["weight_decay"],
                "decoupled_weight_decay": group["decoupled_weight_decay"],
                "maximize": group["maximize"],
            }
            # Parameters that share device, dtype and host counters are updated together.
            buckets: dict[tuple[Any, ...], list[list[Any]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise ValueError("Anon does not support sparse gradients")
                if torch.is_complex(p):
                    raise ValueError("Anon does not support complex parameters")
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["s"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["P"] = torch.ones_like(p, memory_format=torch.preserve_format)
                    state["last_refresh"] = 0
                    state["refreshes"] = 0
                state["step"] += 1
                step = int(state["step"].item())  # a CPU tensor: no device synchronisation
                last = state["last_refresh"]
                span = step - last if _is_refresh_step(step, group["refresh"]) else 0
                if span:
                    state["last_refresh"] = step
                    state["refreshes"] += 1
                key = (p.device, p.dtype, step, span, last == 0)
                lists = buckets.setdefault(key, [[], [], [], [], []])
                for lst, t in zip(
                    lists, (p, grad, state["m"], state["s"], state["P"]), strict=True
                ):
                    lst.append(t)

            for (device, _, step, span, first), lists in buckets.items():
                kwargs = dict(hyper, step=step, refresh_span=span, first_refresh=first)
                foreach = group["foreach"]
                if foreach is False:
                    for p, g, m, s, P in zip(*lists, strict=True):
                        anon_reference(p, g, m, s, P, **kwargs)
                elif foreach is None and _use_compiled(device, lists[0], span, group["refresh"]):
                    # The C++ CPU kernel where it builds, else the compiled step.
                    if not _cpu_kernel.anon_update(*lists, **kwargs):
                        _anon_compiled(*lists, **kwargs)
                else:
                    anon_foreach(*lists, **kwargs)
        return loss


def _is_refresh_step(step: int, schedule: str) -> bool:
    if schedule == "every":
        return True
    return step & (step - 1) == 0  # 1, 2, 4, 8, ...


def _validate(hp: dict[str, Any]) -> None:
    """Raise ValueError naming the hyperparameter and its allowed range."""
    check_common("Anon", hp, flags=("decoupled_weight_decay", "maximize"))
    in_range("Anon", "idu_beta", hp["idu_beta"], 0.0, 1.0)
    if hp["refresh"] not in REFRESH_SCHEDULES:
        raise ValueError(f"Anon: refresh must be one of {REFRESH_SCHEDULES}, got {hp['refresh']!r}")


def anon_reference(
    param: Tensor,
    grad: Tensor,
    m: Tensor,
    s: Tensor,
    P: Tensor,
    *,
    step: int,
    refresh_span: int,
    first_refresh: bool,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    adaptivity: float,
    idu_beta: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
) -> None:
    """One Anon step for one tensor, written to be read (the reference for the fast paths).

    ``step`` counts this step (1 on the first); ``refresh_span`` is 0 when this step does not
    refresh the preconditioner, else the number of steps L since the previous refresh;
    ``first_refresh`` is true for the first refresh. ``param``, ``m``, ``s`` and ``P`` are updated
    in place; ``grad`` is left unchanged.
    """
    g = -grad if maximize else grad
    if weight_decay != 0:
        if decoupled_weight_decay:
            param.mul_(1 - lr * weight_decay)
        else:
            g = g.add(param, alpha=weight_decay)  # a new tensor: the caller's grad stays intact
    m.mul_(beta1).add_(g, alpha=1 - beta1)
    s.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    if refresh_span:
        sigma = (s / (1 - beta2**refresh_span) + eps) ** adaptivity
        if first_refresh:
            P.copy_(sigma**-0.5)
        else:
            P.copy_((idu_beta * P**-2 + (1 - idu_beta) * sigma) ** -0.5)
        s.zero_()
    param.addcmul_(m, P, value=-lr / (1 - beta1**step))


def anon_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    ms: list[Tensor],
    ss: list[Tensor],
    Ps: list[Tensor],
    *,
    step: int,
    refresh_span: int,
    first_refresh: bool,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    adaptivity: float,
    idu_beta: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
) -> None:
    """:func:`anon_reference` for a list of tensors that share step and refresh counters, with
    multi-tensor kernels. The tensors must share device and dtype."""
    if not params:
        return
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        if decoupled_weight_decay:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        elif maximize:  # grads is already our own copy
            torch._foreach_add_(grads, params, alpha=weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(ms, grads, 1 - beta1)
    torch._foreach_mul_(ss, beta2)
    torch._foreach_addcmul_(ss, grads, grads, value=1 - beta2)
    if refresh_span:
        sigma = torch._foreach_div(ss, 1 - beta2**refresh_span)
        torch._foreach_add_(sigma, eps)
        torch._foreach_pow_(sigma, adaptivity)
        if first_refresh:
            torch._foreach_pow_(sigma, -0.5)
            torch._foreach_copy_(Ps, sigma)
        else:
            inv_sq = torch._foreach_pow(Ps, -2.0)
            torch._foreach_mul_(inv_sq, idu_beta)
            torch._foreach_add_(inv_sq, sigma, alpha=1 - idu_beta)
            torch._foreach_pow_(inv_sq, -0.5)
            torch._foreach_copy_(Ps, inv_sq)
        torch._foreach_zero_(ss)
    torch._foreach_addcmul_(params, ms, Ps, value=-lr / (1 - beta1**step))


def _use_compiled(device: torch.device, params: list[Tensor], span: int, schedule: str) -> bool:
    if not _compile_state["available"] or device.type != "cpu":
        return False
    if span and schedule != "every":  # rare refresh steps: not worth a second compiled graph
        return False
    if sum(p.numel() for p in params) < COMPILE_MIN_NUMEL:
        return False
    # inside a caller's compiled region: let it trace the eager path instead
    return not torch.compiler.is_compiling()


def _fused_update(
    params: list[Tensor],
    grads: list[Tensor],
    ms: list[Tensor],
    ss: list[Tensor],
    Ps: list[Tensor],
    scalars: list[Tensor],
    refresh: bool,
    first_refresh: bool,
    weight_decay_mode: str,
    maximize: bool,
) -> None:
    # Compiled by torch.compile: every line below fuses into one pass over each tensor.
    # Scalars arrive as 0-d tensors so that new values (lr schedules, bias corrections) reuse the
    # compiled code; the flags are Python values and select the graph.
    neg_lr_bc1, one_minus_beta1, beta2, one_minus_beta2, inv_bc2, eps, adaptivity = scalars[:7]
    idu_beta, one_minus_idu_beta, weight_decay, decay = scalars[7:]
    for p, g, m, s, P in zip(params, grads, ms, ss, Ps, strict=True):
        if maximize:
            g = -g
        if weight_decay_mode == "coupled":
            g = g + weight_decay * p
        elif weight_decay_mode == "decoupled":
            p.mul_(decay)
        m.lerp_(g, one_minus_beta1)
        s_new = s * beta2 + one_minus_beta2 * g * g
        if refresh:
            sigma = (s_new * inv_bc2 + eps) ** adaptivity
            if first_refresh:
                P_new = sigma**-0.5
            else:
                P_new = (idu_beta * P**-2 + one_minus_idu_beta * sigma) ** -0.5
            P.copy_(P_new)
            s.zero_()
        else:
            P_new = P
            s.copy_(s_new)
        p.add_(m * P_new * neg_lr_bc1)


def _anon_compiled(
    params: list[Tensor],
    grads: list[Tensor],
    ms: list[Tensor],
    ss: list[Tensor],
    Ps: list[Tensor],
    *,
    step: int,
    refresh_span: int,
    first_refresh: bool,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    adaptivity: float,
    idu_beta: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
) -> None:
    compiled = _compile_state.get("fn")
    if compiled is None:
        # Symbolic sizes make the per-tensor kernels identical, so inductor emits (and the C++
        # compiler builds) a few kernels instead of one per parameter, and the graph serves any
        # layout with the same number of tensors.
        compiled = _compile_state["fn"] = torch.compile(_fused_update, fullgraph=True, dynamic=True)
    values = [
        -lr / (1 - beta1**step),
        1 - beta1,
        beta2,
        1 - beta2,
        1 / (1 - beta2**refresh_span) if refresh_span else 1.0,
        eps,
        adaptivity,
        idu_beta,
        1 - idu_beta,
        weight_decay,
        1 - lr * weight_decay,
    ]
    scalars = [torch.tensor(v, dtype=torch.float64) for v in values]
    mode = "none" if weight_decay == 0 else "decoupled" if decoupled_weight_decay else "coupled"
    try:
        compiled(
            params, grads, ms, ss, Ps, scalars, bool(refresh_span), first_refresh, mode, maximize
        )
    except Exception as exc:  # no C++ compiler, unsupported platform, ...: stay correct, eagerly
        _compile_state["available"] = False
        warnings.warn(
            f"Anon: torch.compile is unavailable ({type(exc).__name__}: {exc}); "
            "using the eager multi-tensor path",
            RuntimeWarning,
            stacklevel=3,
        )
        anon_foreach(
            params,
            grads,
            ms,
            ss,
            Ps,
            step=step,
            refresh_span=refresh_span,
            first_refresh=first_refresh,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            adaptivity=adaptivity,
            idu_beta=idu_beta,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
        )
