"""The multi-tensor fast paths of HVAdam and Anon: flat state, cost independent of the number of
tensors, and exactness against the reference paths in the cases the flat layout makes special
(segments, the masked pass, a late first gradient, checkpoints across paths)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from hvadam import Anon, HVAdam, _fastpath

F64 = torch.float64


@pytest.fixture(autouse=True)
def eager_fast_path() -> Iterator[None]:
    with _fastpath.overrides(compile=False, cpu_kernel=False):
        yield


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _tensors(n: int, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """n small parameters with gradients; the last one has none (it splits its bucket)."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(1 + i % 5, generator=gen, dtype=dtype).requires_grad_() for i in range(n)]
    for p in params[:-1]:
        p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
    return params


def _groups(params: list[torch.Tensor], groups: int) -> list[dict]:
    if groups == 1:
        return [{"params": params}]
    half = len(params) // 2
    return [{"params": params[:half]}, {"params": params[half:], "lr": 3e-3}]


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "hvadam": lambda groups: HVAdam(groups, foreach=True),
    "hvadam-amsgrad": lambda groups: HVAdam(groups, foreach=True, amsgrad=True, adaptivity=0.5),
    "anon": lambda groups: Anon(groups, foreach=True, adaptivity=1.0),
}


def _ops_per_step(name: str, tensors: int, groups: int) -> int:
    opt = OPTIMIZERS[name](_groups(_tensors(tensors), groups))
    for _ in range(3):  # past packing, the restart and Anon's first refreshes (1, 2)
        opt.step()
    counter = _OpCounter()
    with counter:
        opt.step()
    return counter.count


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_ops_per_step_do_not_grow_with_the_number_of_tensors(name: str, groups: int) -> None:
    few, many = _ops_per_step(name, 10, groups), _ops_per_step(name, 200, groups)
    assert abs(many - few) <= 0.1 * few, (few, many)
    # and they are few: a per-tensor path would dispatch thousands at 200 tensors
    assert many < 200 * groups


@pytest.mark.slow
def test_compiled_step_calls_three_graphs_whatever_the_number_of_tensors() -> None:
    if not _fastpath.Settings.from_environment().compile:
        pytest.skip("HVADAM_COMPILE=0")

    def profile(n: int) -> dict[str, int]:
        opt = HVAdam(_tensors(n), foreach=True)
        with _fastpath.overrides(compile=True):
            for _ in range(3):
                opt.step()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                opt.step()
        counts: dict[str, int] = {}
        for event in prof.events():
            name = "compiled graph" if "CompiledFxGraph" in event.name else event.name
            counts[name] = counts.get(name, 0) + 1
        return counts

    few, many = profile(10), profile(200)
    assert "cpu" not in _fastpath._compile_broken
    # New bias corrections and learning rates every step reuse the graphs: no recompiles.
    from torch._dynamo.utils import counters

    opt = HVAdam(_tensors(30), foreach=True)
    with _fastpath.overrides(compile=True):
        opt.step()
        opt.step()
        compiled_frames = counters["frames"]["ok"]
        for step in range(5):
            opt.param_groups[0]["lr"] = 1e-3 * (step + 2)
            opt.step()
    assert counters["frames"]["ok"] == compiled_frames
    # pass (a), the decision, pass (c); the gather, gather and scatter are one op each
    assert few["compiled graph"] == many["compiled graph"] == 3
    assert few["aten::_foreach_copy_"] == many["aten::_foreach_copy_"] == 3


# --- flat state ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hvadam", "anon"])
def test_state_tensors_are_views_of_one_flat_buffer_per_bucket(name: str) -> None:
    params = _tensors(6, dtype=F64)
    params[-1].grad = torch.ones_like(params[-1])
    extra = torch.zeros(3, requires_grad=True)  # float32: a second bucket in the same group
    extra.grad = torch.ones(3)
    opt = OPTIMIZERS[name]([{"params": [*params, extra]}])
    opt.step()
    key = "exp_avg" if name == "hvadam" else "m"
    bases = {opt.state[p][key].untyped_storage().data_ptr() for p in params}
    assert len(bases) == 1  # one buffer for the float64 bucket
    assert opt.state[extra][key].untyped_storage().data_ptr() not in bases
    for p in params:
        assert opt.state[p][key].shape == p.shape
        assert opt.state[p]["step"].dim() == 0 and int(opt.state[p]["step"]) == 1
    # state_dict keeps torch.optim's structure: one entry per parameter with its own tensors
    saved = opt.state_dict()["state"]
    assert sorted(saved) == list(range(len(params) + 1))
    assert saved[0][key].shape == params[0].shape


def test_optimizer_memory_is_three_state_tensors_per_parameter() -> None:
    params = _tensors(5)
    params[-1].grad = torch.ones_like(params[-1])
    opt = HVAdam(params, foreach=True)
    opt.step()
    numel = sum(p.numel() for p in params)
    run = next(iter(opt._fast_runs.values()))[1]
    bucket = next(iter(run.flat.buckets.values()))
    assert sum(b.numel() for b in bucket.buffers.values()) == 3 * numel
    # the work buffers (gradients and parameters gathered) hold two more, documented
    assert sorted(bucket._work) == ["grad", "param"]


def test_a_group_mixing_devices_is_refused_with_a_clear_error() -> None:
    cpu = torch.zeros(2, requires_grad=True)
    meta = torch.zeros(2, device="meta", requires_grad=True)
    cpu.grad, meta.grad = torch.ones(2), torch.ones(2, device="meta")
    opt = HVAdam([cpu, meta])
    with pytest.raises(ValueError, match=r"param group 0 mixes devices \(cpu, meta\)"):
        opt.step()


# --- exactness in the cases the flat layout makes special ----------------------------------------


def _hvadam_pair(n: int, **kw) -> list[tuple[list[torch.Tensor], HVAdam]]:
    pairs = []
    for foreach in (False, True):
        params = [p.detach().clone().requires_grad_() for p in _tensors(n, seed=3, dtype=F64)]
        pairs.append((params, HVAdam(params, lr=1e-2, foreach=foreach, **kw)))
    return pairs


def _step_both(pairs, grads: list[torch.Tensor | None]) -> None:
    for params, opt in pairs:
        for p, g in zip(params, grads, strict=True):
            p.grad = None if g is None else g.clone()
        opt.step()


def _assert_equal_params(pairs, rtol: float = 1e-10) -> None:
    (ref, _), (fast, _) = pairs
    for a, b in zip(ref, fast, strict=True):
        torch.testing.assert_close(b, a, rtol=rtol, atol=1e-14)


@pytest.mark.parametrize(
    "kw", [{}, {"amsgrad": True, "adaptivity": 0.6, "gamma": 0.2, "weight_decay": 0.1}]
)
def test_many_segments_take_the_masked_pass_and_match_the_reference(kw: dict) -> None:
    n = 12
    pairs = _hvadam_pair(n, restart_threshold=0.5, **kw)
    gen = torch.Generator().manual_seed(4)
    masked_steps = 0
    for step in range(24):
        # Every other parameter lacks a gradient at odd steps: 6 segments, past MAX_SEGMENTS;
        # afterwards their step counts lag, which keeps splitting the bucket.
        grads = [
            None if step % 2 and i % 2 else torch.randn(1 + i % 5, generator=gen, dtype=F64)
            for i in range(n)
        ]
        _step_both(pairs, grads)
        plan = pairs[1][1]._fast_runs[next(iter(pairs[1][1]._fast_runs))][1].flat._last[1][0]
        masked_steps += plan.masked
    assert masked_steps >= 12
    _assert_equal_params(pairs)
    (ref_params, ref), (fast_params, fast) = pairs
    for p, q in zip(ref_params, fast_params, strict=True):
        assert int(ref.state[p]["step"]) == int(fast.state[q]["step"])
    for name in ("flag", "n", "restarts", "skips"):
        assert torch.equal(
            ref.param_groups[0]["hv_state"][name], fast.param_groups[0]["hv_state"][name]
        )


def test_a_late_first_gradient_repacks_the_bucket_and_keeps_the_others_state() -> None:
    pairs = _hvadam_pair(6)
    gen = torch.Generator().manual_seed(5)
    for step in range(14):
        grads = [torch.randn(1 + i % 5, generator=gen, dtype=F64) for i in range(6)]
        if step < 7:
            grads[2] = None  # its first gradient arrives at step 7
        _step_both(pairs, grads)
        if step == 6:
            fast = pairs[1][1]
            bucket = next(iter(next(iter(fast._fast_runs.values()))[1].flat.buckets.values()))
            assert len(bucket.params) == 5
    bucket = next(iter(next(iter(pairs[1][1]._fast_runs.values()))[1].flat.buckets.values()))
    assert len(bucket.params) == 6 and bucket.steps == [14, 14, 7, 14, 14, 14]
    _assert_equal_params(pairs)


@pytest.mark.parametrize("name", ["hvadam", "anon"])
def test_checkpoints_move_between_the_reference_and_the_fast_path(name: str) -> None:
    def build(foreach: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()
        cls = HVAdam if name == "hvadam" else Anon
        return model, cls(model.parameters(), lr=1e-2, foreach=foreach)

    def train(model, opt, steps: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            opt.zero_grad()
            model(torch.randn(5, 4, generator=gen, dtype=F64)).pow(2).mean().backward()
            opt.step()

    for first, second in ((True, False), (False, True)):
        model, opt = build(first)
        train(model, opt, 6, seed=1)
        snapshot = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
        train(model, opt, 6, seed=2)
        # the same six steps on the other path, from the checkpoint
        other_model, other = build(second)
        other_model.load_state_dict(snapshot[0])
        other.load_state_dict(snapshot[1])
        train(other_model, other, 6, seed=2)
        for a, b in zip(model.parameters(), other_model.parameters(), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-14)


def test_switching_paths_between_steps_keeps_the_step_counts() -> None:
    params = _tensors(4, dtype=F64)
    params[-1].grad = torch.ones_like(params[-1])
    opt = HVAdam(params, foreach=True)
    for foreach in (True, False, False, True, True):
        opt.param_groups[0]["foreach"] = foreach
        opt.step()
    assert all(int(opt.state[p]["step"]) == 5 for p in params)
    run = next(iter(opt._fast_runs.values()))[1]
    assert next(iter(run.flat.buckets.values())).steps == [5, 5, 5, 5]


def test_a_compiled_training_step_runs_the_optimizer_outside_the_graph() -> None:
    model = nn.Linear(3, 2).double()
    reference = copy.deepcopy(model)
    opt = HVAdam(model.parameters(), lr=1e-2)
    ref_opt = HVAdam(reference.parameters(), lr=1e-2, foreach=False)
    x = torch.randn(4, 3, dtype=F64)

    def train_step(net, optimizer):
        optimizer.zero_grad()
        net(x).pow(2).mean().backward()
        optimizer.step()

    compiled = torch.compile(train_step, backend="eager")
    for _ in range(4):
        compiled(model, opt)
        train_step(reference, ref_opt)
    for a, b in zip(reference.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-14)
