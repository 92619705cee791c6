"""The C++ CPU kernels (hvadam/csrc/cpu_kernel.cpp): every build against the reference paths.

The machine's build (at its vector width) and the baseline build are each built once per test
session (load() keeps the module; torch caches the build on disk between sessions).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

import hvadam._anon as anon_module
from hvadam import _cpu_kernel, _fastpath, _hvadam
from hvadam._anon import anon_reference
from hvadam._hvadam import HVAdam

F64 = torch.float64
LOW = (torch.float16, torch.bfloat16)


@pytest.fixture(scope="module")
def kernel():
    module = _cpu_kernel.load()
    if module is None:
        pytest.skip("the CPU kernel cannot be built here (no C++ compiler)")
    return module


@pytest.fixture(scope="module")
def baseline(kernel):
    module = _cpu_kernel.load("default")
    if module is None:
        pytest.skip("the baseline CPU kernel cannot be built here")
    return module


@pytest.fixture
def kernel_only(monkeypatch: pytest.MonkeyPatch, kernel) -> Iterator[None]:
    """HVAdam's fast path through the kernel only: the flat-buffer passes must not run."""

    def not_expected(*args, **kwargs):
        raise AssertionError("the flat-buffer passes ran instead of the CPU kernel")

    monkeypatch.setattr(_hvadam, "_pass", not_expected)
    with _fastpath.overrides(cpu_kernel=True):
        yield


# --- the build: ISA, cache key, generated layout ---


def test_machine_build_is_for_the_machines_isa(kernel) -> None:
    assert kernel.capability() == _cpu_kernel.machine_isa()
    lanes = {"avx512": 16, "avx2": 8, "default": 8}[_cpu_kernel.machine_isa()]
    assert kernel.float_lanes() == lanes


@pytest.mark.parametrize(
    ("capability", "isa"),
    [("AVX512", "avx512"), ("AVX2", "avx2"), ("DEFAULT", "default"), ("NO AVX", "default"),
     ("VSX", "default"), ("SVE256", "default")],
)  # fmt: skip
def test_machine_isa_follows_torchs_cpu_capability(
    monkeypatch: pytest.MonkeyPatch, capability: str, isa: str
) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert _cpu_kernel.machine_isa() == isa


def test_a_missing_isa_loads_the_baseline_build(monkeypatch: pytest.MonkeyPatch, baseline) -> None:
    monkeypatch.setattr(_cpu_kernel, "machine_isa", lambda: "default")
    for isa in ("avx2", "avx512"):
        module = _cpu_kernel.load(isa)
        assert module is baseline
        assert module.capability() == "default"


def test_an_unknown_isa_is_refused() -> None:
    with pytest.raises(ValueError, match=r"isa must be one of \('default', 'avx2', 'avx512'\)"):
        _cpu_kernel.load("sse9")


def test_the_build_name_is_keyed_by_source_flags_isa_and_torch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = _cpu_kernel.source()
    name = _cpu_kernel.build_name("avx2", text)
    assert name == _cpu_kernel.build_name("avx2")  # the shipped source
    assert name.startswith("hvadam_cpu_kernel_avx2_")
    assert _cpu_kernel.build_name("avx2", text + "\n// edited\n") != name
    assert _cpu_kernel.build_name("avx512", text) != name
    assert _cpu_kernel.build_name("default", text) != name
    monkeypatch.setattr(_cpu_kernel, "_BASE_FLAGS", [*_cpu_kernel._BASE_FLAGS, "-g"])
    assert _cpu_kernel.build_name("avx2", text) != name
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert _cpu_kernel.build_name("avx2", text) != name


def test_the_cpp_enums_are_generated_from_the_python_layouts() -> None:
    header = _cpu_kernel.header()
    for i, field in enumerate(_cpu_kernel.HVADAM_HP_FIELDS):
        assert f"HV_{field.upper()} = {i}," in header
    assert f"HV_COUNT = {len(_cpu_kernel.HVADAM_HP_FIELDS)}" in header
    for i, field in enumerate(_cpu_kernel.ANON_HP_FIELDS):
        assert f"AN_{field.upper()} = {i}," in header
    assert _cpu_kernel.source().startswith(header)
    # _hvadam builds hp in this layout.
    assert _hvadam._HP_FIELDS is _cpu_kernel.HVADAM_HP_FIELDS
    group = {"lr": 0.1, "betas": (0.8, 0.9), "eps": 1e-8, "gamma": 0.2, "adaptivity": 1.4,
             "weight_decay": 0.5, "decoupled_weight_decay": True, "maximize": True,
             "restart_threshold": 0.3, "hv_step_range": (0.01, 10.0)}  # fmt: skip
    hp = dict(zip(_cpu_kernel.HVADAM_HP_FIELDS, _hvadam._hyperparameters(group), strict=True))
    assert hp["half_adaptivity"] == 0.7 and hp["decay"] == pytest.approx(0.95)
    assert hp["sign"] == -1.0 and hp["wd_coupled"] == 0.0 and hp["hi"] == 10.0


# --- HVAdam: the passes of the machine's build and the baseline build, bit for bit ---

SIZES = (1, 7, 16, 33, 300, 5000, 70_001)  # tails of every length, one threaded tensor


def _hvadam_inputs(dtype: torch.dtype, ams: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)

    def rand(n: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(n, generator=gen, dtype=F64) * scale).to(dtype)

    params = [rand(n) for n in SIZES]
    grads = [rand(n, 0.1) for n in SIZES]
    ms = [rand(n, 0.05) for n in SIZES]
    ss = [rand(n, 0.01).abs() for n in SIZES]
    vs = [rand(n, 0.05) for n in SIZES]
    s_maxs = [rand(n, 0.01).abs() for n in SIZES] if ams else []
    steps = [torch.tensor(float(i), dtype=torch.float32) for i in range(len(SIZES))]
    return params, grads, ms, ss, vs, s_maxs, steps


def _hp(**overrides) -> torch.Tensor:
    group = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "gamma": 0.1, "adaptivity": 1.0,
             "weight_decay": 0.01, "decoupled_weight_decay": False, "maximize": False,
             "restart_threshold": 0.1, "hv_step_range": (1e-3, 1e3)}  # fmt: skip
    group.update(overrides)
    return torch.tensor(_hvadam._hyperparameters(group), dtype=F64)


def _run_passes(module, inputs, hp: torch.Tensor, unit: bool, decision: list[float]):
    lists = [[t.clone() for t in ts] for ts in inputs]
    params, grads, ms, ss, vs, s_maxs, steps = lists
    bcs = torch.empty(len(params), 2, dtype=F64)
    sums = module.first_pass(params, grads, ms, ss, vs, s_maxs, steps, hp, bcs, unit)
    module.hidden_pass(params, ms, vs, bcs, torch.tensor(decision, dtype=F64))
    return sums, bcs, lists


def _assert_identical(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), (a, b)
    else:
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_identical(x, y)


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("ams", "hp_overrides", "decision"),
    [
        (False, {}, [0.3, 0.0, 1.0, 0.02]),  # a hidden-vector step
        (
            True,
            {"adaptivity": 1.6, "decoupled_weight_decay": True},
            [0.7, 1.0, 0.0, 0.0],
        ),  # restart
        (False, {"adaptivity": 0.5, "maximize": True}, [0.1, 0.0, 1.0, 1e-3]),
    ],
)
def test_baseline_build_equals_the_vectorised_build(
    kernel, baseline, dtype: torch.dtype, ams: bool, hp_overrides: dict, decision: list[float]
) -> None:
    inputs = _hvadam_inputs(dtype, ams)
    hp = _hp(**hp_overrides)
    unit = hp_overrides.get("adaptivity", 1.0) == 1.0
    fast = _run_passes(kernel, inputs, hp, unit, decision)
    base = _run_passes(baseline, inputs, hp, unit, decision)
    _assert_identical(fast, base)
    assert torch.isfinite(fast[0]).all() and fast[0][0] > 0


def test_group_sums_do_not_depend_on_the_number_of_threads(kernel) -> None:
    inputs = _hvadam_inputs(torch.float32, ams=False, seed=4)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(_run_passes(kernel, inputs, _hp(), True, [0.3, 0.0, 1.0, 0.01]))
    finally:
        torch.set_num_threads(before)
    _assert_identical(results[0], results[1])
    _assert_identical(results[0], results[2])


def test_first_pass_sums_and_bias_corrections_follow_their_definitions(kernel) -> None:
    inputs = _hvadam_inputs(F64, ams=False, seed=2)
    hp = _hp(gamma=0.0, weight_decay=0.0)
    sums, bcs, (_, _, ms, _, _, _, steps) = _run_passes(kernel, inputs, hp, True, [0, 0, 0, 0])
    for i, step in enumerate(steps):
        t = float(step)
        assert t == i + 1  # incremented
        assert bcs[i, 0].item() == pytest.approx(1 / (1 - 0.9**t), rel=1e-14)
        assert bcs[i, 1].item() == pytest.approx(1 / math.sqrt(1 - 0.999**t), rel=1e-14)
    m_hats = [m * bcs[i, 0] for i, m in enumerate(ms)]
    vs = inputs[4]  # v is read, not written, when the decision is "nothing"
    expected = [
        sum(float((a * b).sum()) for a, b in zip(xs, ys, strict=True))
        for xs, ys in ((m_hats, m_hats), (m_hats, vs), (vs, vs))
    ]
    torch.testing.assert_close(sums, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=0)


def test_views_into_a_larger_buffer_give_the_results_of_separate_tensors(kernel) -> None:
    inputs = _hvadam_inputs(torch.float32, ams=True, seed=3)
    viewed = []
    for ts in inputs[:6]:
        # One flat buffer per list, each tensor a view at an odd offset (unaligned for vectors).
        buffer = torch.full((sum(t.numel() for t in ts) + 3 * len(ts),), 7.0)
        views, offset = [], 1
        for t in ts:
            view = buffer[offset : offset + t.numel()]
            view.copy_(t)
            views.append(view)
            offset += t.numel() + 3
        viewed.append(views)
    viewed.append(inputs[6])
    hp, decision = _hp(), [0.4, 0.0, 1.0, 0.01]
    separate = _run_passes(kernel, inputs, hp, True, decision)
    lists = [list(ts) for ts in viewed]
    lists[6] = [t.clone() for t in lists[6]]
    bcs = torch.empty(len(SIZES), 2, dtype=F64)
    sums = kernel.first_pass(*lists, hp, bcs, True)
    kernel.hidden_pass(lists[0], lists[2], lists[4], bcs, torch.tensor(decision, dtype=F64))
    _assert_identical((sums, bcs, lists), separate)
    gaps = viewed[0][0]._base  # the gaps between the views are left alone
    assert gaps is not None and float(gaps[0]) == 7.0 and float(gaps[-1]) == 7.0


def test_mismatched_lists_are_refused_with_a_clear_error(kernel) -> None:
    params, grads, ms, ss, vs, s_maxs, steps = _hvadam_inputs(torch.float32, ams=False)
    bcs = torch.empty(len(params), 2, dtype=F64)
    grads[2] = grads[2].double()
    with pytest.raises(
        RuntimeError, match="grad must be a contiguous CPU tensor like its parameter"
    ):
        kernel.first_pass(params, grads, ms, ss, vs, s_maxs, steps, _hp(), bcs, True)
    with pytest.raises(RuntimeError, match="hp must be a contiguous double tensor of 14 values"):
        kernel.first_pass(params, grads, ms, ss, vs, s_maxs, steps, _hp()[:5], bcs, True)


# --- HVAdam with the kernel against the reference path (foreach=False) ---


def _hvadam_run(foreach: bool, dtype: torch.dtype, sizes, steps: int, views: bool, **kw):
    gen = torch.Generator().manual_seed(11)
    starts = [torch.randn(n, generator=gen, dtype=F64).to(dtype) for n in sizes]
    grads = [[(torch.randn(n, generator=gen, dtype=F64) * 0.1).to(dtype) for n in sizes]
             for _ in range(steps)]  # fmt: skip
    if views:  # parameters and gradients as views into one buffer each
        flat = torch.cat(starts)
        params = [t.detach().requires_grad_() for t in flat.split(list(sizes))]
    else:
        params = [s.clone().requires_grad_() for s in starts]
    opt = HVAdam(params, lr=1e-2, foreach=foreach, **kw)
    for gs in grads:
        if views:
            for p, g in zip(params, torch.cat(gs).split(list(sizes)), strict=True):
                p.grad = g
        else:
            for p, g in zip(params, gs, strict=True):
                p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params], opt


def _assert_close(actual, expected, rtol: float) -> None:
    for a, e in zip(actual, expected, strict=True):
        scale = e.double().abs().max().clamp_min(1e-30)
        assert ((a.double() - e.double()).abs().max() / scale).item() <= rtol


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"amsgrad": True},
        {"adaptivity": 0.6, "gamma": 0.3},
        {"adaptivity": 1.5, "amsgrad": True, "weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True},
        {"restart_threshold": 1.0, "weight_decay": 0.05},  # restarts
    ],
)
def test_hvadam_kernel_matches_reference_float64(settings: dict, kernel_only: None) -> None:
    sizes = (3, 40, 1000, 40_000)  # the group is split over threads
    ref, _ = _hvadam_run(False, F64, sizes, 8, False, **settings)
    fast, opt = _hvadam_run(True, F64, sizes, 8, False, **settings)
    _assert_close(fast, ref, 1e-10)
    if settings.get("restart_threshold") == 1.0:
        assert float(opt.param_groups[0]["hv_state"]["restarts"]) >= 1
    else:
        assert float(opt.param_groups[0]["hv_state"]["hv_step"]) > 0


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
def test_hvadam_kernel_matches_reference_in_low_precision(
    dtype: torch.dtype, rtol: float, kernel_only: None
) -> None:
    sizes = (5, 300, 40_000)
    settings = {"amsgrad": True, "weight_decay": 0.01}
    ref, _ = _hvadam_run(False, dtype, sizes, 6, False, **settings)
    fast, _ = _hvadam_run(True, dtype, sizes, 6, False, **settings)
    assert all(t.dtype == dtype for t in fast)
    _assert_close(fast, ref, rtol)


def test_hvadam_kernel_with_parameters_viewing_one_buffer(kernel_only: None) -> None:
    sizes = (17, 4096, 40_000)
    ref, _ = _hvadam_run(False, F64, sizes, 6, True, amsgrad=True)
    fast, _ = _hvadam_run(True, F64, sizes, 6, True, amsgrad=True)
    storage = {t.untyped_storage().data_ptr() for t in fast}
    assert len(storage) == 1  # views of one buffer, updated in place
    _assert_close(fast, ref, 1e-10)


def test_hvadam_large_groups_take_the_kernel_by_default(monkeypatch: pytest.MonkeyPatch, kernel):
    calls = []
    real_load = _cpu_kernel.load
    monkeypatch.setattr(_cpu_kernel, "load", lambda: calls.append(1) or real_load())
    p = torch.zeros(_fastpath.settings.compile_min_numel, requires_grad=True)
    p.grad = torch.ones_like(p)
    with _fastpath.overrides(cpu_kernel=True):
        HVAdam([p]).step()
    assert calls and float(p.detach()[0]) < 0


# --- Anon: anon_update against anon_reference ---


def _anon_steps(update, dtype, sizes, steps: int, schedule: str, layout: str = "separate", **hyper):
    """`steps` Anon steps with the optimizer's bookkeeping; update(lists, **kwargs) per step."""
    gen = torch.Generator().manual_seed(5)
    shapes = [(n,) for n in sizes]
    if layout == "channels_last":
        shapes = [(2, 3, n, 5) for n in sizes]
    params = [torch.randn(s, generator=gen, dtype=F64).to(dtype) for s in shapes]
    if layout == "channels_last":
        params = [p.contiguous(memory_format=torch.channels_last) for p in params]
    ms = [torch.zeros_like(p) for p in params]
    ss = [torch.zeros_like(p) for p in params]
    Ps = [torch.ones_like(p) for p in params]
    if layout == "views":  # every list one buffer, the tensors views into it
        lists = []
        for ts in (params, ms, ss, Ps):
            flat = torch.cat([t.reshape(-1) for t in ts])
            lists.append(list(flat.split(list(sizes))))
        params, ms, ss, Ps = lists
    hyper = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "adaptivity": 1.0,
             "idu_beta": 0.5, "weight_decay": 0.0, "decoupled_weight_decay": False,
             "maximize": False, **hyper}  # fmt: skip
    last = 0
    for step in range(1, steps + 1):
        grads = [(torch.randn(p.shape, generator=gen, dtype=F64) * 0.1).to(dtype) for p in params]
        if layout == "channels_last":
            grads = [g.contiguous(memory_format=torch.channels_last) for g in grads]
        refresh = schedule == "every" or step & (step - 1) == 0
        span = step - last if refresh else 0
        kwargs = dict(hyper, step=step, refresh_span=span, first_refresh=last == 0)
        if span:
            last = step
        kept = [g.clone() for g in grads]
        update([params, grads, ms, ss, Ps], **kwargs)
        for g, k in zip(grads, kept, strict=True):
            assert torch.equal(g, k)  # the gradients are left alone
    return params, ms, ss, Ps


def _reference_update(lists, **kwargs) -> None:
    for p, g, m, s, P in zip(*lists, strict=True):
        anon_reference(p, g, m, s, P, **kwargs)


def _kernel_update(lists, **kwargs) -> None:
    assert _cpu_kernel.anon_update(*lists, **kwargs)


ANON_SETTINGS = [
    {},
    {"adaptivity": 0.0},  # the default: P = 1
    {"adaptivity": 0.5, "idu_beta": 0.8},
    {"adaptivity": 1.7, "weight_decay": 0.1},  # coupled
    {"adaptivity": -0.5, "weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True},
    {"adaptivity": 2.0, "beta1": 0.6, "beta2": 0.9},  # lerp's other formula (weight >= 0.5)
]


@pytest.mark.parametrize("schedule", ["doubling", "every"])
@pytest.mark.parametrize("settings", ANON_SETTINGS)
def test_anon_kernel_matches_reference_float64(kernel, schedule: str, settings: dict) -> None:
    sizes = (1, 19, 256, 40_000)
    ref = _anon_steps(_reference_update, F64, sizes, 9, schedule, **settings)
    fast = _anon_steps(_kernel_update, F64, sizes, 9, schedule, **settings)
    for r, f in zip(ref, fast, strict=True):
        _assert_close(f, r, 1e-10)


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
def test_anon_kernel_matches_reference_in_low_precision(
    kernel, dtype: torch.dtype, rtol: float
) -> None:
    sizes = (7, 40_000)
    settings = {"adaptivity": 1.0, "weight_decay": 0.01}
    ref = _anon_steps(_reference_update, dtype, sizes, 9, "doubling", **settings)
    fast = _anon_steps(_kernel_update, dtype, sizes, 9, "doubling", **settings)
    assert fast[0][0].dtype == dtype
    _assert_close(fast[0], ref[0], rtol)


@pytest.mark.parametrize("layout", ["views", "channels_last"])
def test_anon_kernel_on_views_and_channels_last_tensors(kernel, layout: str) -> None:
    sizes = (3, 4000)
    ref = _anon_steps(_reference_update, F64, sizes, 9, "doubling", layout, adaptivity=0.8)
    fast = _anon_steps(_kernel_update, F64, sizes, 9, "doubling", layout, adaptivity=0.8)
    for r, f in zip(ref, fast, strict=True):
        _assert_close(f, r, 1e-10)
    if layout == "views":
        assert len({t.untyped_storage().data_ptr() for t in fast[0]}) == 1


def test_anon_baseline_build_equals_the_vectorised_build(kernel, baseline, monkeypatch) -> None:
    results = []
    for module in (kernel, baseline):
        monkeypatch.setitem(_cpu_kernel._state, "module", module)
        results.append(
            _anon_steps(_kernel_update, torch.float32, (5, 70_001), 9, "doubling", adaptivity=1.3)
        )
    _assert_identical(results[0], results[1])


def test_anon_update_declines_what_it_cannot_run(kernel, monkeypatch) -> None:
    kwargs = {"step": 1, "refresh_span": 1, "first_refresh": True, "lr": 0.1, "beta1": 0.9,
              "beta2": 0.99, "eps": 1e-8, "adaptivity": 1.0, "idu_beta": 0.5,
              "weight_decay": 0.0, "decoupled_weight_decay": False, "maximize": False}  # fmt: skip
    p = torch.ones(8)
    state = [torch.zeros(8), torch.zeros(8), torch.ones(8)]
    untouched = p.clone()
    # A gradient of another dtype, a broadcast (overlapping) gradient, a transposed state tensor.
    assert not _cpu_kernel.anon_update(
        [p], [torch.ones(8, dtype=F64)], *[[t] for t in state], **kwargs
    )
    assert not _cpu_kernel.anon_update(
        [p], [torch.ones(1).expand(8)], *[[t] for t in state], **kwargs
    )
    q = torch.ones(4, 4)
    assert not _cpu_kernel.anon_update(
        [q],
        [torch.ones(4, 4)],
        [torch.zeros(4, 4).t()],
        [torch.zeros(4, 4)],
        [torch.ones(4, 4)],
        **kwargs,
    )
    with _fastpath.overrides(cpu_kernel=False):  # HVADAM_CPU_KERNEL=0
        assert not _cpu_kernel.anon_update([p], [torch.ones(8)], *[[t] for t in state], **kwargs)
    monkeypatch.setitem(_cpu_kernel._state, "module", None)  # the kernel could not be built
    assert not _cpu_kernel.anon_update([p], [torch.ones(8)], *[[t] for t in state], **kwargs)
    assert torch.equal(p, untouched) and torch.equal(state[2], torch.ones(8))


def test_anon_default_path_runs_the_kernel_for_large_buckets(kernel, monkeypatch) -> None:
    def not_expected(*args, **kwargs):
        raise AssertionError("the compiled step ran instead of the CPU kernel")

    monkeypatch.setattr(anon_module, "_anon_compiled", not_expected)
    monkeypatch.setattr(anon_module, "anon_foreach", not_expected)
    results = []
    for foreach in (None, False):
        numel = _fastpath.settings.compile_min_numel
        p = torch.linspace(-1, 1, numel, dtype=F64).requires_grad_()
        opt = anon_module.Anon([p], lr=0.1, adaptivity=1.0, refresh="every", foreach=foreach)
        for _ in range(3):
            p.grad = torch.sin(p.detach() * 3)
            opt.step()
        results.append(p.detach())
    _assert_close([results[0]], [results[1]], 1e-10)
