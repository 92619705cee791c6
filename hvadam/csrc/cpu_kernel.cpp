// HVAdam's and Anon's CPU kernels: one call per pass over a whole group of tensors.
//
// Built by hvadam/_cpu_kernel.py with torch.utils.cpp_extension, once per instruction set
// (baseline, AVX2, AVX-512): the loops use ATen's at::vec::Vectorized<T>, which is as wide as the
// build's CPU_CAPABILITY. _cpu_kernel.py prepends the enums HVAdamHp and AnonHp (the layouts of
// the hyperparameter vectors, generated from HVADAM_HP_FIELDS and ANON_HP_FIELDS).
//
// Arithmetic: every build does the same IEEE operations on every element in the same order
// (compiled with -ffp-contract=off, so no fused multiply-add, and pow() lane by lane through
// std::pow), so the builds agree bit for bit. Low precision (bfloat16, float16) is computed in
// float32 and rounded when stored. Group sums: each block of kBlock elements is summed in the
// compute type in kLanes fixed lanes, the lanes in double in lane order, the blocks in double in
// order: the result depends neither on the vector width nor on the number of threads.

#include <torch/extension.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

using at::vec::Vectorized;

// Elements per block: the unit of work for threads and of the compute-type group sums.
constexpr int64_t kBlock = 256;
// Blocks below which a pass runs on one thread (OpenMP's start-up costs more).
constexpr int64_t kGrainBlocks = (1 << 15) / kBlock;

// Lanes of the block sums: 64 bytes whatever the build's vector width.
template <typename T>
constexpr int kLanes = 64 / sizeof(T);

template <typename T>
struct Lanes {
  using V = Vectorized<T>;
  static constexpr int W = V::size();
  static constexpr int L = kLanes<T>;
  static_assert(L % W == 0, "the sum lanes must be whole vectors");
  static constexpr int R = L / W;  // vectors per row of lanes

  static V load(const T* p, int64_t n) { return n >= W ? V::loadu(p) : V::loadu(p, n); }
  static void store(T* p, const V& v, int64_t n) {
    if (n >= W) {
      v.store(p);
    } else {
      v.store(p, static_cast<int>(n));
    }
  }
};

// x ** e lane by lane with std::pow: the same in every build (Vectorized::pow is Sleef's on AVX).
template <typename T>
Vectorized<T> pow_lanes(const Vectorized<T>& x, T e) {
  constexpr int W = Vectorized<T>::size();
  alignas(64) T buf[W];
  x.store(buf);
  for (int l = 0; l < W; ++l) buf[l] = std::pow(buf[l], e);
  return Vectorized<T>::loadu(buf);
}

// torch.pow(x, e) for a scalar exponent: the exponents ATen computes exactly take its shortcuts.
template <typename T>
Vectorized<T> pow_scalar(const Vectorized<T>& x, T e) {
  if (e == T(0)) return Vectorized<T>(T(1));
  if (e == T(1)) return x;
  if (e == T(0.5)) return x.sqrt();
  if (e == T(2)) return x * x;
  if (e == T(-0.5)) return Vectorized<T>(T(1)) / x.sqrt();
  if (e == T(-1)) return Vectorized<T>(T(1)) / x;
  if (e == T(-2)) return Vectorized<T>(T(1)) / (x * x);
  return pow_lanes(x, e);
}

// ------------------------------------------------------------------------------------------
// Low precision: a block is widened into float buffers, computed, and rounded when stored.
// ------------------------------------------------------------------------------------------

template <typename S>
struct Widened {
  float* buf;
  const S* src;
  S* dst;
  int64_t n;
  Widened(float* b, const S* s, S* d, int64_t len) : buf(b), src(s), dst(d), n(len) {
    if (src != nullptr)
      for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(src[i]);
  }
  void write_back() const {
    if (dst != nullptr)
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<S>(buf[i]);
  }
};

// ------------------------------------------------------------------------------------------
// HVAdam pass (a): m, s (s_max), theta; block sums <m_hat,m_hat>, <m_hat,v>, <v,v>.
// ------------------------------------------------------------------------------------------

template <typename T>
struct FirstScalars {
  T lr, beta1, omb1, beta2, omb2, eps, gamma, half_a, wd, decay, sign, bc0, bc1;
};

// One block (len <= kBlock) in the compute type T, in place; adds the block's sums to out[0..2].
template <typename T, bool kUnit, bool kAms>
void first_block(T* __restrict__ P, const T* __restrict__ G, T* __restrict__ M,
                 T* __restrict__ S, const T* __restrict__ V, T* __restrict__ SM, int64_t len,
                 const FirstScalars<T>& c, double* out) {
  using X = Lanes<T>;
  using Vec = typename X::V;
  const Vec lr(c.lr), beta1(c.beta1), omb1(c.omb1), beta2(c.beta2), omb2(c.omb2), eps(c.eps),
      gamma(c.gamma), wd(c.wd), decay(c.decay), sign(c.sign), bc0(c.bc0), bc1(c.bc1);
  Vec amm[X::R], aml[X::R], all[X::R];
  for (int r = 0; r < X::R; ++r) amm[r] = aml[r] = all[r] = Vec(T(0));
  for (int64_t row = 0; row < len; row += X::L) {
    for (int r = 0; r < X::R; ++r) {
      const int64_t i = row + r * X::W;
      const int64_t n = len - i;
      if (n <= 0) break;
      Vec theta = X::load(P + i, n);
      Vec g = X::load(G + i, n);
      const Vec m0 = X::load(M + i, n);
      const Vec s0 = X::load(S + i, n);
      const Vec v = X::load(V + i, n);
      g = g * sign;
      theta = theta * decay;
      g = g + wd * theta;
      const Vec m = beta1 * m0 + omb1 * g;
      const Vec gv = g - v;
      const Vec p = gv * gv;
      const Vec gm = g - m;
      const Vec rr = p / (gm * gm + gamma * p + eps) * p;
      const Vec m_hat = m * bc0;
      Vec s = beta2 * s0 + omb2 * rr;
      // Padded lanes of a partial vector load as zeros: they add nothing to the sums.
      amm[r] = amm[r] + m_hat * m_hat;
      aml[r] = aml[r] + m_hat * v;
      all[r] = all[r] + v * v;
      s = s + eps;
      Vec s_used = s;
      if constexpr (kAms) {
        s_used = at::vec::maximum(X::load(SM + i, n), s);  // NaN propagates, as torch.maximum
        X::store(SM + i, s_used, n);
      }
      Vec denom;
      if constexpr (kUnit) {
        denom = s_used.sqrt() * bc1 + eps;
      } else {
        denom = pow_lanes(s_used * bc1, c.half_a) + eps;
      }
      theta = theta - lr * m_hat / denom;
      X::store(M + i, m, n);
      X::store(S + i, s, n);
      X::store(P + i, theta, n);
    }
  }
  alignas(64) T lanes[3][X::L];
  for (int r = 0; r < X::R; ++r) {
    amm[r].store(lanes[0] + r * X::W);
    aml[r].store(lanes[1] + r * X::W);
    all[r].store(lanes[2] + r * X::W);
  }
  for (int k = 0; k < 3; ++k) {
    double sum = 0.0;
    for (int l = 0; l < X::L; ++l) sum += static_cast<double>(lanes[k][l]);
    out[k] = sum;
  }
}

template <typename S, bool kUnit, bool kAms>
void first_blocks(S* P, const S* G, S* M, S* Sv, const S* V, S* SM, int64_t numel, int64_t b0,
                  int64_t b1, const FirstScalars<at::opmath_type<S>>& c, double* sums) {
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t at = b * kBlock;
    const int64_t len = std::min(kBlock, numel - at);
    double* out = sums + 3 * b;
    if constexpr (std::is_same_v<S, at::opmath_type<S>>) {
      first_block<S, kUnit, kAms>(P + at, G + at, M + at, Sv + at, V + at,
                                  kAms ? SM + at : nullptr, len, c, out);
    } else {
      alignas(64) float buf[6][kBlock];
      Widened<S> p(buf[0], P + at, P + at, len), g(buf[1], G + at, nullptr, len),
          m(buf[2], M + at, M + at, len), s(buf[3], Sv + at, Sv + at, len),
          v(buf[4], V + at, nullptr, len),
          sm(buf[5], kAms ? SM + at : nullptr, kAms ? SM + at : nullptr, len);
      first_block<float, kUnit, kAms>(p.buf, g.buf, m.buf, s.buf, v.buf, sm.buf, len, c, out);
      p.write_back();
      m.write_back();
      s.write_back();
      sm.write_back();
    }
  }
}

// ------------------------------------------------------------------------------------------
// HVAdam pass (c): restart (v = m_hat) or hidden-vector step (v, theta).
// ------------------------------------------------------------------------------------------

template <typename T>
void hidden_block(T* __restrict__ P, const T* __restrict__ M, T* __restrict__ V, int64_t len,
                  T bc0s, T ks, T lr_bs, bool restart) {
  using X = Lanes<T>;
  using Vec = typename X::V;
  const Vec bc0(bc0s), k(ks), omk(T(1) - ks), lr_b(lr_bs);
  for (int64_t i = 0; i < len; i += X::W) {
    const int64_t n = len - i;
    const Vec m_hat = X::load(M + i, n) * bc0;
    if (restart) {
      X::store(V + i, m_hat, n);
    } else {
      const Vec v_new = k * X::load(V + i, n) + omk * m_hat;
      X::store(P + i, X::load(P + i, n) - lr_b * v_new, n);
      X::store(V + i, v_new, n);
    }
  }
}

template <typename S>
void hidden_blocks(S* P, const S* M, S* V, int64_t numel, int64_t b0, int64_t b1, double bc0d,
                   double kd, double lr_bd, bool restart) {
  using T = at::opmath_type<S>;
  // 1 - k is taken in double, as the reference's (1 - k) of a double k.
  const T bc0 = bc0d, k = kd, lr_b = lr_bd;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t at = b * kBlock;
    const int64_t len = std::min(kBlock, numel - at);
    if constexpr (std::is_same_v<S, T>) {
      hidden_block<T>(P + at, M + at, V + at, len, bc0, k, lr_b, restart);
    } else {
      alignas(64) float buf[3][kBlock];
      Widened<S> p(buf[0], restart ? nullptr : P + at, restart ? nullptr : P + at, len),
          m(buf[1], M + at, nullptr, len), v(buf[2], restart ? nullptr : V + at, V + at, len);
      hidden_block<float>(p.buf, m.buf, v.buf, len, bc0, k, lr_b, restart);
      p.write_back();
      v.write_back();
    }
  }
}

// ------------------------------------------------------------------------------------------
// Anon: one step (moments, an optional preconditioner refresh, theta).
// ------------------------------------------------------------------------------------------

enum Refresh { kNoRefresh = 0, kFirstRefresh = 1, kLaterRefresh = 2 };
enum WeightDecay { kNoDecay = 0, kCoupled = 1, kDecoupled = 2 };

template <typename T>
struct AnonScalars {
  T neg_lr_bc1, lerp_weight, beta2, omb2, bc2, eps, adaptivity, idu, omidu, wd, decay;
  bool maximize;
  int wd_mode;
};

template <typename T, int kRefresh>
void anon_block(T* __restrict__ P, const T* __restrict__ G, T* __restrict__ M,
                T* __restrict__ S, T* __restrict__ PR, int64_t len, const AnonScalars<T>& c) {
  using X = Lanes<T>;
  using Vec = typename X::V;
  const Vec neg_lr_bc1(c.neg_lr_bc1), w(c.lerp_weight), omw(T(1) - c.lerp_weight),
      beta2(c.beta2), omb2(c.omb2), bc2(c.bc2), eps(c.eps), idu(c.idu), omidu(c.omidu),
      wd(c.wd), decay(c.decay), one(T(1));
  // torch.lerp's two formulas, chosen by the weight as ATen does.
  const bool small_weight = std::abs(c.lerp_weight) < T(0.5);
  for (int64_t i = 0; i < len; i += X::W) {
    const int64_t n = len - i;
    Vec theta = X::load(P + i, n);
    Vec g = X::load(G + i, n);
    if (c.maximize) g = g * Vec(T(-1));  // exact negation, as torch.neg
    if (c.wd_mode == kCoupled) {
      g = g + wd * theta;
    } else if (c.wd_mode == kDecoupled) {
      theta = theta * decay;
    }
    const Vec m0 = X::load(M + i, n);
    const Vec m = small_weight ? m0 + w * (g - m0) : g - (g - m0) * omw;
    Vec s = X::load(S + i, n) * beta2;
    s = s + omb2 * g * g;
    Vec precond;
    if constexpr (kRefresh == kNoRefresh) {
      precond = X::load(PR + i, n);
      X::store(S + i, s, n);
    } else {
      const Vec sigma = pow_scalar(s / bc2 + eps, c.adaptivity);
      if constexpr (kRefresh == kFirstRefresh) {
        precond = one / sigma.sqrt();
      } else {
        const Vec p_old = X::load(PR + i, n);
        const Vec inv_sq = one / (p_old * p_old) * idu + omidu * sigma;
        precond = one / inv_sq.sqrt();
      }
      X::store(PR + i, precond, n);
      X::store(S + i, Vec(T(0)), n);
    }
    X::store(M + i, m, n);
    X::store(P + i, theta + neg_lr_bc1 * m * precond, n);
  }
}

template <typename S, int kRefresh>
void anon_blocks(S* P, const S* G, S* M, S* Sv, S* PR, int64_t numel, int64_t b0, int64_t b1,
                 const AnonScalars<at::opmath_type<S>>& c) {
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t at = b * kBlock;
    const int64_t len = std::min(kBlock, numel - at);
    if constexpr (std::is_same_v<S, at::opmath_type<S>>) {
      anon_block<S, kRefresh>(P + at, G + at, M + at, Sv + at, PR + at, len, c);
    } else {
      alignas(64) float buf[5][kBlock];
      Widened<S> p(buf[0], P + at, P + at, len), g(buf[1], G + at, nullptr, len),
          m(buf[2], M + at, M + at, len), s(buf[3], Sv + at, Sv + at, len),
          pr(buf[4], PR + at, kRefresh == kNoRefresh ? nullptr : PR + at, len);
      anon_block<float, kRefresh>(p.buf, g.buf, m.buf, s.buf, pr.buf, len, c);
      p.write_back();
      m.write_back();
      s.write_back();
      pr.write_back();
    }
  }
}

// ------------------------------------------------------------------------------------------
// Groups: the blocks of all tensors of a group form one range split over the threads.
// ------------------------------------------------------------------------------------------

int64_t blocks_of(int64_t numel) { return (numel + kBlock - 1) / kBlock; }

// starts[j] = the group's first block of tensor j; starts.back() = the group's blocks.
std::vector<int64_t> block_starts(const std::vector<torch::Tensor>& params) {
  std::vector<int64_t> starts(params.size() + 1, 0);
  for (size_t j = 0; j < params.size(); ++j) starts[j + 1] = starts[j] + blocks_of(params[j].numel());
  return starts;
}

// fn(j, first block, end block) for each tensor's part of every thread's range of blocks.
template <typename F>
void for_each_block(const std::vector<int64_t>& starts, const F& fn) {
  at::parallel_for(0, starts.back(), kGrainBlocks, [&](int64_t begin, int64_t end) {
    auto j = static_cast<size_t>(std::upper_bound(starts.begin(), starts.end(), begin) -
                                 starts.begin() - 1);
    while (begin < end) {
      const int64_t stop = std::min(end, starts[j + 1]);
      if (stop > begin) fn(j, begin - starts[j], stop - starts[j]);
      begin = stop;
      ++j;
    }
  });
}

void check_like(const torch::Tensor& t, const torch::Tensor& param, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == param.scalar_type() &&
                  t.numel() == param.numel(),
              "HVAdam CPU kernel: ", name, " must be a contiguous CPU tensor like its parameter");
}

void check_lists(size_t n, std::initializer_list<const std::vector<torch::Tensor>*> lists) {
  for (const auto* list : lists) {
    TORCH_CHECK(list->size() == n, "HVAdam CPU kernel: the tensor lists differ in length");
  }
}

void bump(std::initializer_list<std::vector<torch::Tensor>*> lists) {
  // Written through raw pointers: bump the version counters as in-place tensor ops do.
  for (auto* list : lists) {
    for (auto& t : *list) torch::autograd::impl::bump_version(t);
  }
}

// Element-wise over the same memory: dense, non-overlapping, laid out like the parameter.
bool same_layout(const torch::Tensor& t, const torch::Tensor& param) {
  return t.device().is_cpu() && t.scalar_type() == param.scalar_type() &&
         t.sizes() == param.sizes() && t.strides() == param.strides() &&
         t.is_non_overlapping_and_dense();
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
  TORCH_CHECK(hp.scalar_type() == at::kDouble && hp.is_contiguous() && hp.numel() == HV_COUNT,
              "HVAdam CPU kernel: hp must be a contiguous double tensor of ", HV_COUNT, " values");
  const size_t count = params.size();
  TORCH_CHECK(bcs.scalar_type() == at::kDouble && bcs.is_contiguous() &&
                  bcs.numel() == static_cast<int64_t>(2 * count),
              "HVAdam CPU kernel: bcs must be a contiguous double tensor [n, 2]");
  const bool ams = !s_maxs.empty();
  check_lists(count, {&grads, &ms, &ss, &vs, &steps});
  if (ams) check_lists(count, {&s_maxs});
  for (size_t j = 0; j < count; ++j) {
    const auto& p = params[j];
    TORCH_CHECK(p.device().is_cpu() && p.is_contiguous() && at::isFloatingType(p.scalar_type()),
                "HVAdam CPU kernel: parameters must be contiguous floating-point CPU tensors");
    check_like(grads[j], p, "grad");
    check_like(ms[j], p, "exp_avg");
    check_like(ss[j], p, "exp_avg_var");
    check_like(vs[j], p, "hidden");
    if (ams) check_like(s_maxs[j], p, "max_exp_avg_var");
    TORCH_CHECK(steps[j].scalar_type() == at::kFloat && steps[j].numel() == 1,
                "HVAdam CPU kernel: step must be a float32 scalar");
  }
  const double* h = hp.data_ptr<double>();
  double* bc = bcs.data_ptr<double>();
  for (size_t j = 0; j < count; ++j) {
    float* step = steps[j].data_ptr<float>();
    *step += 1.0f;
    const double t = static_cast<double>(*step);
    const double bc2 = 1.0 - std::pow(h[HV_BETA2], t);
    bc[2 * j] = 1.0 / (1.0 - std::pow(h[HV_BETA1], t));
    bc[2 * j + 1] = 1.0 / (unit ? std::sqrt(bc2) : bc2);
  }
  const auto starts = block_starts(params);
  std::vector<double> partial(3 * static_cast<size_t>(starts.back()), 0.0);
  for_each_block(starts, [&](size_t j, int64_t b0, int64_t b1) {
    const auto& p = params[j];
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "hvadam_first", [&] {
      using T = at::opmath_type<scalar_t>;
      // Scalars are rounded to the compute type, as tensor ops do with 0-d tensors.
      const FirstScalars<T> c{static_cast<T>(h[HV_LR]), static_cast<T>(h[HV_BETA1]),
                              static_cast<T>(h[HV_ONE_MINUS_BETA1]), static_cast<T>(h[HV_BETA2]),
                              static_cast<T>(h[HV_ONE_MINUS_BETA2]), static_cast<T>(h[HV_EPS]),
                              static_cast<T>(h[HV_GAMMA]), static_cast<T>(h[HV_HALF_ADAPTIVITY]),
                              static_cast<T>(h[HV_WD_COUPLED]), static_cast<T>(h[HV_DECAY]),
                              static_cast<T>(h[HV_SIGN]), static_cast<T>(bc[2 * j]),
                              static_cast<T>(bc[2 * j + 1])};
      scalar_t* SM = ams ? s_maxs[j].data_ptr<scalar_t>() : nullptr;
      double* out = partial.data() + 3 * starts[j];
      auto run = [&](auto fn) {
        fn(p.data_ptr<scalar_t>(), grads[j].data_ptr<scalar_t>(), ms[j].data_ptr<scalar_t>(),
           ss[j].data_ptr<scalar_t>(), vs[j].data_ptr<scalar_t>(), SM, p.numel(), b0, b1, c, out);
      };
      if (unit && ams) run(first_blocks<scalar_t, true, true>);
      else if (unit) run(first_blocks<scalar_t, true, false>);
      else if (ams) run(first_blocks<scalar_t, false, true>);
      else run(first_blocks<scalar_t, false, false>);
    });
  });
  double sums[3] = {0.0, 0.0, 0.0};
  for (size_t b = 0; b < partial.size(); b += 3) {
    sums[0] += partial[b];
    sums[1] += partial[b + 1];
    sums[2] += partial[b + 2];
  }
  bump({&params, &ms, &ss, &vs, &s_maxs});
  return torch::tensor({sums[0], sums[1], sums[2]}, torch::dtype(torch::kDouble));
}

// Pass (c) over a group: decision = [k, restart, hidden_step, lr*b] (double).
void hidden_pass(std::vector<torch::Tensor> params, std::vector<torch::Tensor> ms,
                 std::vector<torch::Tensor> vs, torch::Tensor bcs, torch::Tensor decision) {
  TORCH_CHECK(decision.scalar_type() == at::kDouble && decision.is_contiguous() &&
                  decision.numel() == 4,
              "HVAdam CPU kernel: decision must be a contiguous double tensor of 4 values");
  const size_t count = params.size();
  TORCH_CHECK(bcs.scalar_type() == at::kDouble && bcs.is_contiguous() &&
                  bcs.numel() == static_cast<int64_t>(2 * count),
              "HVAdam CPU kernel: bcs must be a contiguous double tensor [n, 2]");
  check_lists(count, {&ms, &vs});
  for (size_t j = 0; j < count; ++j) {
    const auto& p = params[j];
    TORCH_CHECK(p.device().is_cpu() && p.is_contiguous() && at::isFloatingType(p.scalar_type()),
                "HVAdam CPU kernel: parameters must be contiguous floating-point CPU tensors");
    check_like(ms[j], p, "exp_avg");
    check_like(vs[j], p, "hidden");
  }
  const double* d = decision.data_ptr<double>();
  const double kd = d[0], lr_bd = d[3];
  const bool restart = d[1] > 0, step = d[2] > 0;
  if (!restart && !step) return;  // v and theta stay as they are
  const double* bc = bcs.data_ptr<double>();
  for_each_block(block_starts(params), [&](size_t j, int64_t b0, int64_t b1) {
    const auto& p = params[j];
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "hvadam_hidden", [&] {
      hidden_blocks<scalar_t>(p.data_ptr<scalar_t>(), ms[j].data_ptr<scalar_t>(),
                              vs[j].data_ptr<scalar_t>(), p.numel(), b0, b1, bc[2 * j], kd, lr_bd,
                              restart);
    });
  });
  bump({&vs});
  if (step) bump({&params});
}

// One Anon step over tensors that share step and refresh counters (anon_update in
// _cpu_kernel.py computes hp, layout AnonHp). refresh: 0 none, 1 first, 2 later;
// wd_mode: 0 none, 1 coupled, 2 decoupled. Returns false, touching nothing, where the tensors do
// not suit the kernel (another device, dtypes or layouts that differ, ...).
bool anon_step(std::vector<torch::Tensor> params, std::vector<torch::Tensor> grads,
               std::vector<torch::Tensor> ms, std::vector<torch::Tensor> ss,
               std::vector<torch::Tensor> Ps, std::vector<double> hp, int64_t refresh,
               int64_t wd_mode, bool maximize) {
  TORCH_CHECK(hp.size() == AN_COUNT, "Anon CPU kernel: hp must hold ", AN_COUNT, " values");
  TORCH_CHECK(refresh >= 0 && refresh <= 2, "Anon CPU kernel: refresh must be 0, 1 or 2");
  TORCH_CHECK(wd_mode >= 0 && wd_mode <= 2, "Anon CPU kernel: wd_mode must be 0, 1 or 2");
  const size_t count = params.size();
  if (grads.size() != count || ms.size() != count || ss.size() != count || Ps.size() != count)
    return false;
  for (size_t j = 0; j < count; ++j) {
    const auto& p = params[j];
    if (!at::isFloatingType(p.scalar_type()) || !p.device().is_cpu() ||
        !p.is_non_overlapping_and_dense())
      return false;
    for (const auto* t : {&grads[j], &ms[j], &ss[j], &Ps[j]}) {
      if (!same_layout(*t, p)) return false;
    }
  }
  const auto starts = block_starts(params);
  for_each_block(starts, [&](size_t j, int64_t b0, int64_t b1) {
    const auto& p = params[j];
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "anon_step", [&] {
      using T = at::opmath_type<scalar_t>;
      const AnonScalars<T> c{static_cast<T>(hp[AN_NEG_LR_BC1]), static_cast<T>(hp[AN_LERP_WEIGHT]),
                             static_cast<T>(hp[AN_BETA2]), static_cast<T>(hp[AN_ONE_MINUS_BETA2]),
                             static_cast<T>(hp[AN_BC2_SPAN]), static_cast<T>(hp[AN_EPS]),
                             static_cast<T>(hp[AN_ADAPTIVITY]), static_cast<T>(hp[AN_IDU_BETA]),
                             static_cast<T>(hp[AN_ONE_MINUS_IDU_BETA]),
                             static_cast<T>(hp[AN_WEIGHT_DECAY]), static_cast<T>(hp[AN_DECAY]),
                             maximize, static_cast<int>(wd_mode)};
      auto run = [&](auto fn) {
        fn(p.data_ptr<scalar_t>(), grads[j].data_ptr<scalar_t>(), ms[j].data_ptr<scalar_t>(),
           ss[j].data_ptr<scalar_t>(), Ps[j].data_ptr<scalar_t>(), p.numel(), b0, b1, c);
      };
      if (refresh == kNoRefresh) run(anon_blocks<scalar_t, kNoRefresh>);
      else if (refresh == kFirstRefresh) run(anon_blocks<scalar_t, kFirstRefresh>);
      else run(anon_blocks<scalar_t, kLaterRefresh>);
    });
  });
  bump({&params, &ms, &ss});
  if (refresh != kNoRefresh) bump({&Ps});
  return true;
}

// The instruction set this build's vectors were compiled for.
std::string capability() {
#if defined(CPU_CAPABILITY_AVX512)
  return "avx512";
#elif defined(CPU_CAPABILITY_AVX2)
  return "avx2";
#else
  return "default";
#endif
}

// Vector lanes of float32 in this build (16 with AVX-512, 8 otherwise).
int64_t float_lanes() { return Vectorized<float>::size(); }
