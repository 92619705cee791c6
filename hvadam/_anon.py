"""Anon: Adam-style momentum with a tunable-adaptivity preconditioner refreshed by delayed merges (IDU)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from hvadam import _cpu_kernel, _fastpath
from hvadam._checks import check_common, in_range
from hvadam._fastpath import Bucket, FlatGroup

__all__ = ["Anon", "anon_foreach", "anon_reference"]

REFRESH_SCHEDULES = ("doubling", "every")


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

    ``foreach``: ``False`` runs :func:`anon_reference` tensor by tensor; ``True`` and ``None``
    (default) run the fast path: per param group and (device, dtype) the state lives in flat
    buffers (``self.state[p]`` holds views, so ``state_dict()`` is unchanged) and a step is a few
    multi-tensor ops (:func:`anon_foreach`) per run of parameters with equal step counts, however
    many tensors the group has; it never synchronises with the host. With ``None`` on a CPU,
    buckets of at least 2**20 elements run a ``torch.compile``'d step that fuses the moment and
    parameter updates into one pass (refresh steps of the doubling schedule run eagerly);
    compiling takes seconds, once per process and layout. If compiling fails the optimizer warns
    once and stays eager; ``HVADAM_COMPILE=0`` turns compiling off.
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

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.__dict__.pop("_flat_groups", None)  # the loaded state is packed at the next step

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.is_sparse:
                    raise ValueError("Anon does not support sparse gradients")
                if torch.is_complex(p):
                    raise ValueError("Anon does not support complex parameters")
            if not params:
                continue
            if group["foreach"] is False:
                # The reference path changes the state on its own: the fast path's host copy of
                # the step counts is dropped and packed again from the state when it next runs.
                self.__dict__.get("_flat_groups", {}).pop(id(group), None)
                self._reference_step(group, params)
            else:
                _fast_step(group, params, self.state, self._flat_group(group))
        return loss

    def _flat_group(self, group: dict[str, Any]) -> FlatGroup:
        # Kept out of the param group (so out of state_dict) and rebuilt after unpickling.
        flats = self.__dict__.setdefault("_flat_groups", {})
        entry = flats.get(id(group))
        if entry is None or entry[0] is not group:
            flat = FlatGroup(_STATE, _INIT, torch.device("cpu"), _HOST_INIT)
            entry = flats[id(group)] = (group, flat)
        return entry[1]

    def _reference_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                for name in _STATE:
                    state[name] = torch.full_like(
                        p, _INIT.get(name, 0.0), memory_format=torch.preserve_format
                    )
                state.update(_HOST_INIT)
            state["step"] += 1
            step = int(state["step"].item())  # a CPU tensor: no device synchronisation
            span, first = _refresh(state, step, group["refresh"])
            anon_reference(
                p, cast(Tensor, p.grad), state["m"], state["s"], state["P"],
                **_hyper(group), step=step, refresh_span=span, first_refresh=first,
            )  # fmt: skip


_STATE = ("m", "s", "P")
_INIT = {"P": 1.0}
_HOST_INIT = {"last_refresh": 0, "refreshes": 0}


def _hyper(group: dict[str, Any]) -> dict[str, Any]:
    beta1, beta2 = group["betas"]
    return {
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


def _refresh(state: dict[str, Any], step: int, schedule: str) -> tuple[int, bool]:
    """(refresh span, first refresh) of a parameter at `step`; counts the refresh in `state`."""
    last = state["last_refresh"]
    if not _is_refresh_step(step, schedule):
        return 0, last == 0
    state["last_refresh"] = step
    state["refreshes"] += 1
    return step - last, last == 0


@torch.compiler.disable
def _fast_step(group: dict[str, Any], params: list[Tensor], state: Any, flat: FlatGroup) -> None:
    """The multi-tensor step over the group's flat state: a few foreach ops per segment (a run
    of parameters with the same step count), however many tensors the group has."""

    def last_refresh(bucket: Bucket) -> list[int]:
        return [state[p]["last_refresh"] for p in bucket.params]

    hyper = _hyper(group)
    schedule = group["refresh"]
    for plan in flat.prepare(group["params"], params, state, split=last_refresh):
        bucket = plan.bucket
        grads = cast(list[Tensor], [p.grad for p in plan.params])
        # Large CPU buckets with the default foreach=None: the C++ kernel, else one compiled pass.
        accelerate = (
            group["foreach"] is None
            and bucket.device.type == "cpu"
            and _fastpath.accelerate(bucket.device, None, plan.numel)
        )
        lists = [plan.params, grads, *(plan.views(name) for name in _STATE)]
        for (a, b), step in zip(plan.positions, plan.advance(), strict=True):
            members = plan.params[a:b]
            span, first = _refresh(state[members[0]], step, schedule)
            if span:  # every member of a segment refreshes together
                for p in members[1:]:
                    _refresh(state[p], step, schedule)
            segment = lists if (a, b) == (0, len(plan.params)) else [x[a:b] for x in lists]
            kwargs = {**hyper, "step": step, "refresh_span": span, "first_refresh": first}
            if accelerate and _cpu_kernel.anon_update(*segment, **kwargs):
                continue  # the C++ kernel: one call, in place
            if (
                accelerate
                and not (span and schedule != "every")  # rare refreshes: no second graph
                and _fastpath.use_compile(bucket.device, None, plan.numel)
            ):
                _anon_compiled(*segment, **kwargs)
            else:
                anon_foreach(*segment, **kwargs)


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
        grads = list(torch._foreach_neg(grads))
    if weight_decay != 0:
        if decoupled_weight_decay:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        elif maximize:  # grads is already our own copy
            torch._foreach_add_(grads, params, alpha=weight_decay)
        else:
            grads = list(torch._foreach_add(grads, params, alpha=weight_decay))
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
    refresh = bool(refresh_span)
    # Symbolic sizes make the per-tensor kernels identical, so inductor emits (and the C++
    # compiler builds) a few kernels instead of one per parameter. If compiling fails, this
    # call runs _fused_update eagerly and later steps take the multi-tensor path.
    key = ("anon", params[0].device.type, refresh, first_refresh, mode, maximize)
    _fastpath.run(
        _fused_update,
        key,
        params,
        grads,
        ms,
        ss,
        Ps,
        scalars,
        refresh,
        first_refresh,
        mode,
        maximize,
    )
