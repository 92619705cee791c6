"""HVAdam's CPU kernels as a C++ extension: one call per pass per group, built at first use.

The fast path's passes (a) and (c) (see _hvadam.py) loop over every tensor of a group in C++,
so a step costs two Python-to-C++ calls per group instead of two compiled calls per tensor.
The per-element arithmetic follows _fast_first_update / _fast_hidden_update operation by
operation (low precision computed in float32 and rounded when stored; the group sums in double).
Built with torch.utils.cpp_extension.load_inline and cached on disk by torch
(TORCH_EXTENSIONS_DIR); `load()` returns None, once warned, where it cannot be built.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

_CPP = r"""
#include <torch/extension.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/csrc/autograd/variable.h>
#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// Elements below which a tensor's loop runs on one thread (OpenMP's start-up costs more).
constexpr int64_t kParallelMin = 1 << 15;
// Elements whose group sums are accumulated in the compute type before joining the double sums.
constexpr int64_t kBlock = 256;

// hp layout: _HP_FIELDS in _hvadam.py.
struct Hyper {
  double lr, beta1, omb1, beta2, omb2, eps, gamma, half_a, wd, decay, sign;
};

template <typename scalar_t, bool kUnit, bool kAms>
void first_one(scalar_t* __restrict__ P, const scalar_t* __restrict__ G, scalar_t* __restrict__ M,
               scalar_t* __restrict__ S, const scalar_t* __restrict__ V, scalar_t* __restrict__ SM,
               int64_t n, const Hyper& h, double bc0d, double bc1d, double* sums) {
  using opmath_t = at::opmath_type<scalar_t>;
  // Scalars are rounded to the compute type, as tensor ops do with 0-d tensors.
  const opmath_t lr = h.lr, beta1 = h.beta1, omb1 = h.omb1, beta2 = h.beta2, omb2 = h.omb2,
                 eps = h.eps, gamma = h.gamma, half_a = h.half_a, wd = h.wd, decay = h.decay,
                 sign = h.sign, bc0 = bc0d, bc1 = bc1d;
  double mm = 0.0, ml = 0.0, ll = 0.0;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for reduction(+ : mm, ml, ll) if (n >= kParallelMin)
  for (int64_t b = 0; b < blocks; ++b) {
  const int64_t end = std::min(n, (b + 1) * kBlock);
  // Sums of a block in the compute type (vectorised), the blocks' sums in double.
  opmath_t bmm = 0, bml = 0, bll = 0;
#pragma omp simd reduction(+ : bmm, bml, bll)
  for (int64_t i = b * kBlock; i < end; ++i) {
    opmath_t theta = static_cast<opmath_t>(P[i]);
    opmath_t g = static_cast<opmath_t>(G[i]);
    const opmath_t m0 = static_cast<opmath_t>(M[i]);
    const opmath_t s0 = static_cast<opmath_t>(S[i]);
    const opmath_t v = static_cast<opmath_t>(V[i]);
    g = g * sign;
    theta = theta * decay;
    g = g + wd * theta;
    const opmath_t m = beta1 * m0 + omb1 * g;
    const opmath_t gv = g - v;
    const opmath_t p = gv * gv;
    const opmath_t gm = g - m;
    const opmath_t r = p / (gm * gm + gamma * p + eps) * p;
    const opmath_t m_hat = m * bc0;
    opmath_t s = beta2 * s0 + omb2 * r;
    bmm += m_hat * m_hat;
    bml += m_hat * v;
    bll += v * v;
    s = s + eps;
    opmath_t s_used = s;
    if constexpr (kAms) {
      const opmath_t sm = static_cast<opmath_t>(SM[i]);
      // torch.maximum: NaN propagates.
      s_used = (sm != sm || s != s) ? sm + s : (sm > s ? sm : s);
      SM[i] = static_cast<scalar_t>(s_used);
    }
    opmath_t denom;
    if constexpr (kUnit) {
      denom = std::sqrt(s_used) * bc1 + eps;
    } else {
      denom = std::pow(s_used * bc1, half_a) + eps;
    }
    theta = theta - lr * m_hat / denom;
    M[i] = static_cast<scalar_t>(m);
    S[i] = static_cast<scalar_t>(s);
    P[i] = static_cast<scalar_t>(theta);
  }
  mm += static_cast<double>(bmm);
  ml += static_cast<double>(bml);
  ll += static_cast<double>(bll);
  }
  sums[0] += mm;
  sums[1] += ml;
  sums[2] += ll;
}

template <typename scalar_t>
void hidden_one(scalar_t* __restrict__ P, const scalar_t* __restrict__ M, scalar_t* __restrict__ V,
                int64_t n, double bc0d, double kd, double lr_bd, bool restart) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t bc0 = bc0d, k = kd, omk = 1.0 - kd, lr_b = lr_bd;
  if (restart) {
#pragma omp parallel for simd if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) {
      V[i] = static_cast<scalar_t>(static_cast<opmath_t>(M[i]) * bc0);
    }
  } else {
#pragma omp parallel for simd if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) {
      const opmath_t m_hat = static_cast<opmath_t>(M[i]) * bc0;
      const opmath_t v_new = k * static_cast<opmath_t>(V[i]) + omk * m_hat;
      P[i] = static_cast<scalar_t>(static_cast<opmath_t>(P[i]) - lr_b * v_new);
      V[i] = static_cast<scalar_t>(v_new);
    }
  }
}

double scalar(const torch::Tensor& t, int64_t i) {
  return t.data_ptr<double>()[i];
}

void check(const torch::Tensor& t, const torch::Tensor& param, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == param.scalar_type() &&
                  t.numel() == param.numel(),
              "HVAdam CPU kernel: ", name, " must be a contiguous CPU tensor like its parameter");
}

}  // namespace

// Pass (a) over a group: increments the step counts, fills bcs [n, 2] (double) with
// 1/(1-beta1^t) and 1/sqrt(1-beta2^t) (adaptivity 1) or 1/(1-beta2^t), updates m, s (s_max), theta;
// returns [<m_hat,m_hat>, <m_hat,v>, <v,v>] (double) summed over the group.
torch::Tensor first_pass(std::vector<torch::Tensor> params, std::vector<torch::Tensor> grads,
                         std::vector<torch::Tensor> ms, std::vector<torch::Tensor> ss,
                         std::vector<torch::Tensor> vs, std::vector<torch::Tensor> s_maxs,
                         std::vector<torch::Tensor> steps, torch::Tensor hp, torch::Tensor bcs,
                         bool unit) {
  TORCH_CHECK(hp.scalar_type() == at::kDouble && hp.is_contiguous(), "hp must be double");
  TORCH_CHECK(bcs.scalar_type() == at::kDouble && bcs.is_contiguous(), "bcs must be double");
  const bool ams = !s_maxs.empty();
  const Hyper h{scalar(hp, 0), scalar(hp, 1), scalar(hp, 2), scalar(hp, 3), scalar(hp, 4),
                scalar(hp, 5), scalar(hp, 6), scalar(hp, 7), scalar(hp, 8), scalar(hp, 9),
                scalar(hp, 10)};
  double* bc = bcs.data_ptr<double>();
  double sums[3] = {0.0, 0.0, 0.0};
  for (size_t j = 0; j < params.size(); ++j) {
    const auto& p = params[j];
    check(grads[j], p, "grad");
    check(ms[j], p, "exp_avg");
    check(ss[j], p, "exp_avg_var");
    check(vs[j], p, "hidden");
    if (ams) check(s_maxs[j], p, "max_exp_avg_var");
    TORCH_CHECK(p.device().is_cpu() && p.is_contiguous(), "parameters must be contiguous CPU tensors");
    TORCH_CHECK(steps[j].scalar_type() == at::kFloat, "step must be float32");
    float* step = steps[j].data_ptr<float>();
    *step += 1.0f;
    const double t = static_cast<double>(*step);
    const double bc2 = 1.0 - std::pow(h.beta2, t);
    bc[2 * j] = 1.0 / (1.0 - std::pow(h.beta1, t));
    bc[2 * j + 1] = 1.0 / (unit ? std::sqrt(bc2) : bc2);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "hvadam_first", [&] {
      scalar_t* SM = ams ? s_maxs[j].data_ptr<scalar_t>() : nullptr;
      auto run = [&](auto fn) {
        fn(p.data_ptr<scalar_t>(), grads[j].data_ptr<scalar_t>(), ms[j].data_ptr<scalar_t>(),
           ss[j].data_ptr<scalar_t>(), vs[j].data_ptr<scalar_t>(), SM, p.numel(), h, bc[2 * j],
           bc[2 * j + 1], sums);
      };
      if (unit && ams) run(first_one<scalar_t, true, true>);
      else if (unit) run(first_one<scalar_t, true, false>);
      else if (ams) run(first_one<scalar_t, false, true>);
      else run(first_one<scalar_t, false, false>);
    });
  }
  // Written through raw pointers: bump the version counters as in-place tensor ops do.
  for (auto* list : {&params, &ms, &ss, &vs, &s_maxs}) {
    for (auto& t : *list) torch::autograd::impl::bump_version(t);
  }
  return torch::tensor({sums[0], sums[1], sums[2]}, torch::dtype(torch::kDouble));
}

// Pass (c) over a group: decision = [k, restart, hidden_step, lr*b] (double).
void hidden_pass(std::vector<torch::Tensor> params, std::vector<torch::Tensor> ms,
                 std::vector<torch::Tensor> vs, torch::Tensor bcs, torch::Tensor decision) {
  TORCH_CHECK(decision.scalar_type() == at::kDouble, "decision must be double");
  const double* d = decision.data_ptr<double>();
  const double kd = d[0], lr_bd = d[3];
  const bool restart = d[1] > 0, step = d[2] > 0;
  if (!restart && !step) return;  // v and theta stay as they are
  const double* bc = bcs.data_ptr<double>();
  for (size_t j = 0; j < params.size(); ++j) {
    const auto& p = params[j];
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "hvadam_hidden", [&] {
      hidden_one<scalar_t>(p.data_ptr<scalar_t>(), ms[j].data_ptr<scalar_t>(),
                           vs[j].data_ptr<scalar_t>(), p.numel(), bc[2 * j], kd, lr_bd, restart);
    });
    torch::autograd::impl::bump_version(vs[j]);
    if (step) torch::autograd::impl::bump_version(p);
  }
}
"""

_FUNCTIONS = ["first_pass", "hidden_pass"]
_lock = threading.Lock()
_state: dict[str, Any] = {}


def load() -> Any | None:
    """The built extension module, or None (warned once) where it cannot be built."""
    if "module" in _state:
        return _state["module"]
    with _lock:
        if "module" not in _state:
            module = None
            try:
                from torch.utils.cpp_extension import load_inline

                module = load_inline(
                    name="hvadam_cpu_kernel_v2",
                    cpp_sources=[_CPP],
                    functions=_FUNCTIONS,
                    extra_cflags=["-O3", "-fopenmp", "-fno-math-errno"],
                    extra_ldflags=["-fopenmp"],
                    verbose=False,
                )
            except Exception as error:  # no compiler, no headers, ...
                warnings.warn(
                    f"HVAdam: building the CPU kernel failed ({type(error).__name__}: "
                    f"{str(error)[:200]}); using the compiled fast path",
                    RuntimeWarning,
                    stacklevel=3,
                )
            _state["module"] = module
    return _state["module"]
