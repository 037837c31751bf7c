// Fused CPU selective scan (Mamba): forward and backward, for models/mamba.py's `cpu_fused` backend.
//
//   h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,   y_t = (C_t . h_t + D u_t) * silu(z_t),   dt = softplus(delta + bias)
//
// Layout: u, delta, z, y: (b, d, L) with any strides; A: (d, n); B, C: (b, n, L); D, bias: (d,).
// One task = one batch row and a block of W channels (W = one 64-byte vector: 16 floats / 8 doubles). The
// channels of a block are the SIMD lanes (GCC/Clang vector extensions), so the recurrence over time needs no
// cross-lane work and the n-wide state of W channels sits in n vector registers. Per time chunk the task copies
// its slice of the inputs into small time-major tiles (any input strides cost the same).
//
// The backward keeps nothing from the forward: it rescans the block once to get the state at each chunk start,
// then walks the chunks last to first, recomputing that chunk's states and decays into a (chunk+1)·n buffer
// and running the reverse recurrence g_{t-1} = a_t g_t + C_{t-1} dy_{t-1} through it.
// Cross-channel sums (dB, dC) are accumulated per lane over all the task's blocks and reduced once.
//
// fp32 (and bf16/fp16 inputs, upcast by the caller) computes in fp32 with the exp/log below (~1 ulp);
// fp64 computes in fp64 with libm (for gradcheck).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

namespace {

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float V __attribute__((vector_size(64)));
  typedef int32_t I __attribute__((vector_size(64)));
  static constexpr int W = 16;
};
template <>
struct Vec<double> {
  typedef double V __attribute__((vector_size(64)));
  typedef int64_t I __attribute__((vector_size(64)));
  static constexpr int W = 8;
};

template <typename V, typename T>
inline V bcast(T x) {
  V v = {};
  using E = std::remove_cv_t<std::remove_reference_t<decltype(v[0])>>;
  return v + static_cast<E>(x);
}

// exp on a float vector: exp(x) = 2^k e^r, k = round(x log2 e), |r| <= ln2 / 2, e^r by its Taylor series to
// degree 7 (truncation < 6e-9 relative). 2^k is applied as two halves so that k in [-150, 128] stays exact
// (denormal results included).
inline Vec<float>::V vexp(Vec<float>::V x) {
  typedef Vec<float>::V V;
  typedef Vec<float>::I I;
  const float lo = -104.0f, hi = 88.7228f;
  V xc = x < lo ? bcast<V>(lo) : x;
  xc = xc > hi ? bcast<V>(hi) : xc;
  V kf = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest via 1.5·2^23
  V r = (xc - kf * 0.693145751953125f) - kf * 1.428606765330187e-06f;  // ln2 split: hi part exact in k·ln2
  V p = bcast<V>(1.0f / 5040);
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  I k = __builtin_convertvector(kf, I);
  I k1 = k >> 1, k2 = k - k1;
  V s1 = (V)((k1 + 127) << 23), s2 = (V)((k2 + 127) << 23);
  V res = p * s1 * s2;
  res = x < lo ? bcast<V>(0.0f) : res;
  res = x > hi ? bcast<V>(INFINITY) : res;
  return x != x ? x : res;  // NaN stays NaN
}

// log of a float vector of values >= 1 (finite): m·2^e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s),
// s = (m - 1)/(m + 1), |s| <= 0.172, by its odd series to s^11 (truncation < 1e-10 relative).
inline Vec<float>::V vlog_ge1(Vec<float>::V u) {
  typedef Vec<float>::V V;
  typedef Vec<float>::I I;
  I bits = (I)u;
  I e = ((bits >> 23) & 0xff) - 127;
  V m = (V)((bits & 0x7fffff) | 0x3f800000);  // in [1, 2)
  I big = m > 1.41421356f;                     // -1 where m > sqrt(2)
  m = big ? m * 0.5f : m;
  e = e - big;
  V s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
  V p = bcast<V>(1.0f / 11);
  p = p * s2 + 1.0f / 9;
  p = p * s2 + 1.0f / 7;
  p = p * s2 + 1.0f / 5;
  p = p * s2 + 1.0f / 3;
  p = p * s2 + 1.0f;
  V ef = __builtin_convertvector(e, V);
  return (ef * 0.693145751953125f + (2.0f * s * p + ef * 1.428606765330187e-06f));
}

// log1p(y) for y >= 0: log(1 + y)·y / ((1 + y) − 1) corrects the rounding of 1 + y (exact where 1 + y == 1).
inline Vec<float>::V vlog1p_pos(Vec<float>::V y) {
  typedef Vec<float>::V V;
  V u = 1.0f + y;
  V d = u - 1.0f;
  V l = vlog_ge1(u);
  V safe = d == 0.0f ? bcast<V>(1.0f) : d;
  V res = d == 0.0f ? y : l * (y / safe);
  res = y == INFINITY ? y : res;
  return y != y ? y : res;
}

// exp(x·ln2) = 2^x for the decays exp(Δ·A) = 2^(Δ·A·log2 e): 2^k · 2^f, k = round(x), |f| <= 1/2, 2^f = e^(f ln2)
// by its Taylor series to degree 7 (< 6e-9 relative). x <= -127 gives exactly 0 (exponent field 0), x >= 128 inf.
inline Vec<float>::V vexp2(Vec<float>::V x) {
  typedef Vec<float>::V V;
  typedef Vec<float>::I I;
  V xc = x > -127.0f ? x : bcast<V>(-127.0f);
  xc = xc < 128.0f ? xc : bcast<V>(128.0f);
  V kf = (xc + 12582912.0f) - 12582912.0f;
  V g = (xc - kf) * 0.693147180559945309f;
  V p = bcast<V>(1.0f / 5040);
  p = p * g + 1.0f / 720;
  p = p * g + 1.0f / 120;
  p = p * g + 1.0f / 24;
  p = p * g + 1.0f / 6;
  p = p * g + 0.5f;
  p = p * g + 1.0f;
  p = p * g + 1.0f;
  I k = __builtin_convertvector(kf, I);
  V res = p * (V)((k + 127) << 23);
  return x != x ? x : res;
}

inline Vec<double>::V vexp2(Vec<double>::V x) {
  for (int i = 0; i < Vec<double>::W; ++i) x[i] = std::exp2(x[i]);
  return x;
}

inline Vec<double>::V vexp(Vec<double>::V x) {
  for (int i = 0; i < Vec<double>::W; ++i) x[i] = std::exp(x[i]);
  return x;
}

inline Vec<double>::V vlog1p_pos(Vec<double>::V x) {
  for (int i = 0; i < Vec<double>::W; ++i) x[i] = std::log1p(x[i]);
  return x;
}

// torch.nn.functional.softplus (beta 1, threshold 20): v > 20 → v, else log1p(exp(v)).
template <typename V>
inline V vsoftplus(V v) {
  const V th = bcast<V>(20);
  V e = vexp(v < th ? v : bcast<V>(0));
  V sp = vlog1p_pos(e);
  return v > th ? v : sp;
}

// softplus(v) and its derivative sigmoid(v) = e / (1 + e), e = exp(v), sharing the exp.
template <typename V>
inline V vsoftplus_sigmoid(V v, V& sig) {
  const V th = bcast<V>(20), one = bcast<V>(1);
  V e = vexp(v < th ? v : bcast<V>(0));
  sig = v > th ? one : e / (one + e);
  V sp = vlog1p_pos(e);
  return v > th ? v : sp;
}

template <typename V>
inline V vsigmoid(V v) {
  const V one = bcast<V>(1);
  return one / (one + vexp(-v));
}

template <typename V, typename T>
inline T hsum(V v) {
  T s = 0;
  for (int i = 0; i < (int)(sizeof(V) / sizeof(T)); ++i) s += v[i];
  return s;
}

// A (b, d, L)-shaped tensor as a pointer and strides (the batch row already applied).
template <typename T>
struct Seq {
  T* p = nullptr;
  int64_t sb = 0, sd = 0, st = 0;
  Seq() = default;
  explicit Seq(const at::Tensor& t) : p(t.data_ptr<T>()), sb(t.stride(0)), sd(t.stride(1)), st(t.stride(2)) {}
};

template <typename T>
struct Problem {
  int64_t b, d, L, n;
  Seq<T> u, delta, z, y, B, C;  // B, C as (b, n, L)
  const T *A = nullptr, *D = nullptr, *bias = nullptr;
  int64_t sAd = 0, sAn = 0, sD = 0, sbias = 0;
  bool softplus = false;
};

template <typename T>
Problem<T> make_problem(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                        const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                        const std::optional<at::Tensor>& bias, bool softplus) {
  Problem<T> pr;
  pr.b = u.size(0), pr.d = u.size(1), pr.L = u.size(2), pr.n = A.size(1);
  pr.u = Seq<T>(u), pr.delta = Seq<T>(delta), pr.B = Seq<T>(B), pr.C = Seq<T>(C);
  if (z) pr.z = Seq<T>(*z);
  pr.A = A.data_ptr<T>(), pr.sAd = A.stride(0), pr.sAn = A.stride(1);
  if (D) pr.D = D->data_ptr<T>(), pr.sD = D->stride(0);
  if (bias) pr.bias = bias->data_ptr<T>(), pr.sbias = bias->stride(0);
  pr.softplus = softplus;
  return pr;
}

// Copy a (W channels × K steps) slice of a (b, d, L) sequence into a time-major tile of vectors; lanes past d
// get zeros. And back.
template <typename T, typename V>
inline void load_tile(const Seq<T>& s, int64_t bi, int64_t d0, int64_t nd, int64_t t0, int64_t K, V* tile) {
  constexpr int W = Vec<T>::W;
  for (int64_t k = 0; k < K; ++k) tile[k] = bcast<V>(T(0));
  const T* base = s.p + bi * s.sb + t0 * s.st;
  for (int64_t w = 0; w < nd && w < W; ++w) {
    const T* row = base + (d0 + w) * s.sd;
    for (int64_t k = 0; k < K; ++k) tile[k][w] = row[k * s.st];
  }
}

template <typename T, typename V>
inline void store_tile(const Seq<T>& s, int64_t bi, int64_t d0, int64_t nd, int64_t t0, int64_t K, const V* tile) {
  constexpr int W = Vec<T>::W;
  T* base = s.p + bi * s.sb + t0 * s.st;
  for (int64_t w = 0; w < nd && w < W; ++w) {
    T* row = base + (d0 + w) * s.sd;
    for (int64_t k = 0; k < K; ++k) row[k * s.st] = tile[k][w];
  }
}

// B or C (b, n, L) → tile[k·n + j] for the K steps from t0.
template <typename T>
inline void load_bc(const Seq<T>& s, int64_t bi, int64_t n, int64_t t0, int64_t K, T* tile) {
  const T* base = s.p + bi * s.sb + t0 * s.st;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t k = 0; k < K; ++k) tile[k * n + j] = base[j * s.sd + k * s.st];
}

// Per-channel vectors of a block: A (n of them), D, bias.
template <typename T, typename V>
inline void load_params(const Problem<T>& pr, int64_t d0, int64_t nd, V* A, V* A2, V& D, V& bias) {
  for (int64_t j = 0; j < pr.n; ++j) A[j] = bcast<V>(T(0));
  D = bcast<V>(T(0)), bias = bcast<V>(T(0));
  for (int64_t w = 0; w < nd && w < Vec<T>::W; ++w) {
    for (int64_t j = 0; j < pr.n; ++j) A[j][w] = pr.A[(d0 + w) * pr.sAd + j * pr.sAn];
    if (pr.D) D[w] = pr.D[(d0 + w) * pr.sD];
    if (pr.bias) bias[w] = pr.bias[(d0 + w) * pr.sbias];
  }
  for (int64_t j = 0; j < pr.n; ++j) A2[j] = A[j] * T(1.4426950408889634074);  // exp(Δ·A) = 2^(Δ·A2)
}

constexpr int64_t FWD_CHUNK = 64;
constexpr int64_t MAX_STATE = 256;

// ----------------------------------------------------------------------------------------------
// Forward: y for one (batch row, channel block)
// ----------------------------------------------------------------------------------------------

template <typename T, int NS>
void fwd_block(const Problem<T>& pr, int64_t bi, int64_t d0) {
  typedef typename Vec<T>::V V;
  constexpr int W = Vec<T>::W;
  constexpr int NCAP = NS > 0 ? NS : MAX_STATE;
  const int64_t n = NS > 0 ? NS : pr.n, nd = std::min<int64_t>(W, pr.d - d0);
  V A[NCAP], A2[NCAP], h[NCAP], D, bias;
  load_params(pr, d0, nd, A, A2, D, bias);
  for (int64_t j = 0; j < n; ++j) h[j] = bcast<V>(T(0));
  V U[FWD_CHUNK], DT[FWD_CHUNK], Z[FWD_CHUNK], Y[FWD_CHUNK];
  std::vector<T> Bt(FWD_CHUNK * n), Ct(FWD_CHUNK * n);
  for (int64_t t0 = 0; t0 < pr.L; t0 += FWD_CHUNK) {
    const int64_t K = std::min<int64_t>(FWD_CHUNK, pr.L - t0);
    load_tile(pr.u, bi, d0, nd, t0, K, U);
    load_tile(pr.delta, bi, d0, nd, t0, K, DT);
    if (pr.z.p) load_tile(pr.z, bi, d0, nd, t0, K, Z);
    load_bc(pr.B, bi, n, t0, K, Bt.data());
    load_bc(pr.C, bi, n, t0, K, Ct.data());
    for (int64_t k = 0; k < K; ++k) {
      V dt = DT[k] + bias;
      if (pr.softplus) dt = vsoftplus(dt);
      const V du = dt * U[k];
      const T* Bk = Bt.data() + k * n;
      const T* Ck = Ct.data() + k * n;
      V y = bcast<V>(T(0));
      for (int64_t j = 0; j < n; ++j) {
        h[j] = vexp2(dt * A2[j]) * h[j] + du * Bk[j];
        y += h[j] * Ck[j];
      }
      y += D * U[k];
      if (pr.z.p) y *= Z[k] * vsigmoid(Z[k]);
      Y[k] = y;
    }
    store_tile(pr.y, bi, d0, nd, t0, K, Y);
  }
}

// ----------------------------------------------------------------------------------------------
// Backward: all gradients for one (batch row, channel block); dB, dC accumulated per lane in accB/accC
// ----------------------------------------------------------------------------------------------

template <typename T>
struct Grads {
  Seq<T> dout, du, ddelta, dz;
  T *dA = nullptr, *dD = nullptr, *dbias = nullptr;  // (b, d, n), (b, d), (b, d) contiguous
};

template <typename T, int NS>
void bwd_block(const Problem<T>& pr, const Grads<T>& g, int64_t bi, int64_t d0, int64_t chunk,
               typename Vec<T>::V* accB, typename Vec<T>::V* accC) {
  typedef typename Vec<T>::V V;
  constexpr int W = Vec<T>::W;
  constexpr int NCAP = NS > 0 ? NS : MAX_STATE;
  const int64_t n = NS > 0 ? NS : pr.n, nd = std::min<int64_t>(W, pr.d - d0), L = pr.L;
  const int64_t nchunks = (L + chunk - 1) / chunk;
  V A[NCAP], A2[NCAP], h[NCAP], gh[NCAP], dA[NCAP], D, bias;
  load_params(pr, d0, nd, A, A2, D, bias);
  std::vector<V> hb(nchunks * n), Hs((chunk + 1) * n), As(chunk * n);
  std::vector<V> U(chunk), DTR(chunk), Z(chunk), G(chunk), DT(chunk), SIG(chunk), YP(chunk);
  std::vector<V> dU(chunk), dDT(chunk), dZ(chunk);
  std::vector<T> Bt(chunk * n), Ct(chunk * n);
  std::vector<V> DTall(L), SIGall(pr.softplus ? L : 0);  // Δ after bias and softplus, and softplus' derivative

  // pass 1: the state at the start of every chunk, and Δ for every step
  for (int64_t j = 0; j < n; ++j) h[j] = bcast<V>(T(0));
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t t0 = c * chunk, K = std::min(chunk, L - t0);
    for (int64_t j = 0; j < n; ++j) hb[c * n + j] = h[j];
    load_tile(pr.u, bi, d0, nd, t0, K, U.data());
    load_tile(pr.delta, bi, d0, nd, t0, K, DTR.data());
    load_bc(pr.B, bi, n, t0, K, Bt.data());
    for (int64_t k = 0; k < K; ++k) {
      V dt = DTR[k] + bias;
      if (pr.softplus) dt = vsoftplus_sigmoid(dt, SIGall[t0 + k]);
      DTall[t0 + k] = dt;
      if (c == nchunks - 1) continue;  // the last chunk's end state is not needed
      const V du = dt * U[k];
      const T* Bk = Bt.data() + k * n;
      for (int64_t j = 0; j < n; ++j) h[j] = vexp2(dt * A2[j]) * h[j] + du * Bk[j];
    }
  }

  // pass 2: chunks last to first; gh = dLoss/dh_t carried backwards (already multiplied by a_{t+1})
  for (int64_t j = 0; j < n; ++j) gh[j] = bcast<V>(T(0)), dA[j] = bcast<V>(T(0));
  V dD = bcast<V>(T(0)), dbias = bcast<V>(T(0));
  for (int64_t c = nchunks - 1; c >= 0; --c) {
    const int64_t t0 = c * chunk, K = std::min(chunk, L - t0);
    load_tile(pr.u, bi, d0, nd, t0, K, U.data());
    if (pr.z.p) load_tile(pr.z, bi, d0, nd, t0, K, Z.data());
    load_tile(g.dout, bi, d0, nd, t0, K, G.data());
    load_bc(pr.B, bi, n, t0, K, Bt.data());
    load_bc(pr.C, bi, n, t0, K, Ct.data());
    // recompute the chunk: states Hs[k+1] = h_{t0+k} (Hs[0] = the chunk's start state), decays As[k]
    for (int64_t j = 0; j < n; ++j) h[j] = Hs[j] = hb[c * n + j];
    for (int64_t k = 0; k < K; ++k) {
      const V dt = DT[k] = DTall[t0 + k];
      if (pr.softplus) SIG[k] = SIGall[t0 + k];
      const V du = dt * U[k];
      const T* Bk = Bt.data() + k * n;
      const T* Ck = Ct.data() + k * n;
      V y = bcast<V>(T(0));
      for (int64_t j = 0; j < n; ++j) {
        const V a = vexp2(dt * A2[j]);
        h[j] = a * h[j] + du * Bk[j];
        As[k * n + j] = a;
        Hs[(k + 1) * n + j] = h[j];
        y += h[j] * Ck[j];
      }
      YP[k] = y + D * U[k];
    }
    // reverse recurrence through the chunk
    for (int64_t k = K - 1; k >= 0; --k) {
      V gy = G[k];
      if (pr.z.p) {
        const V zk = Z[k], sz = vsigmoid(zk);
        const V one = bcast<V>(T(1));
        dZ[k] = gy * YP[k] * sz * (one + zk * (one - sz));
        gy = gy * zk * sz;
      }
      const V u = U[k], dt = DT[k], x = dt * u;
      dD += gy * u;
      V du = gy * D, ddt = bcast<V>(T(0)), dx = bcast<V>(T(0));
      const T* Bk = Bt.data() + k * n;
      const T* Ck = Ct.data() + k * n;
      V* aB = accB + (t0 + k) * n;
      V* aC = accC + (t0 + k) * n;
      for (int64_t j = 0; j < n; ++j) {
        const V hk = Hs[(k + 1) * n + j], hprev = Hs[k * n + j], a = As[k * n + j];
        aC[j] += gy * hk;                 // dC_t[j] = sum over channels of dy·h_t[j]
        const V gj = gh[j] + gy * Ck[j];  // dLoss/dh_t[j]
        aB[j] += gj * x;                  // dB_t[j] = sum over channels of g·dt·u
        dx += gj * Bk[j];
        const V da = gj * hprev * a;  // d/d(dt·A) of a = exp(dt·A)
        ddt += da * A[j];
        dA[j] += da * dt;
        gh[j] = gj * a;
      }
      ddt += dx * u;
      du += dx * dt;
      if (pr.softplus) ddt = ddt * SIG[k];
      dbias += ddt;
      dU[k] = du;
      dDT[k] = ddt;
    }
    store_tile(g.du, bi, d0, nd, t0, K, dU.data());
    store_tile(g.ddelta, bi, d0, nd, t0, K, dDT.data());
    if (pr.z.p) store_tile(g.dz, bi, d0, nd, t0, K, dZ.data());
  }
  for (int64_t w = 0; w < nd; ++w) {
    const int64_t ch = bi * pr.d + d0 + w;
    for (int64_t j = 0; j < n; ++j) g.dA[ch * n + j] = dA[j][w];
    g.dD[ch] = dD[w];
    g.dbias[ch] = dbias[w];
  }
}

// ----------------------------------------------------------------------------------------------
// Dispatch: dtype, then the state size (compile-time for the common ones)
// ----------------------------------------------------------------------------------------------

template <typename T, typename F>
void with_state_size(int64_t n, F&& f) {
  switch (n) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 16: f(std::integral_constant<int, 16>{}); break;
    case 32: f(std::integral_constant<int, 32>{}); break;
    case 64: f(std::integral_constant<int, 64>{}); break;
    default: f(std::integral_constant<int, 0>{});
  }
}

void check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& C) {
  TORCH_CHECK(u.device().is_cpu(), "selective_scan_cpu: tensors must be on the CPU");
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes(), "selective_scan_cpu: u, delta must be (b, d, L)");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == u.size(1), "selective_scan_cpu: A must be (d, n)");
  TORCH_CHECK(A.size(1) >= 1 && A.size(1) <= MAX_STATE, "selective_scan_cpu: d_state must be in [1, 256]");
  TORCH_CHECK(B.dim() == 3 && B.size(0) == u.size(0) && B.size(1) == A.size(1) && B.size(2) == u.size(2),
              "selective_scan_cpu: B must be (b, n, L)");
  TORCH_CHECK(C.sizes() == B.sizes(), "selective_scan_cpu: C must be (b, n, L)");
}

void fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
         const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
         const std::optional<at::Tensor>& bias, bool softplus, at::Tensor& y) {
  check_inputs(u, delta, A, B, C);
  TORCH_CHECK(y.sizes() == u.sizes(), "selective_scan_cpu: out must be (b, d, L)");
  auto run = [&](auto zero) {
    using T = decltype(zero);
    auto pr = make_problem<T>(u, delta, A, B, C, D, z, bias, softplus);
    pr.y = Seq<T>(y);
    const int64_t blocks = (pr.d + Vec<T>::W - 1) / Vec<T>::W;
    with_state_size<T>(pr.n, [&](auto ns) {
      constexpr int NS = decltype(ns)::value;
      at::parallel_for(0, pr.b * blocks, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) fwd_block<T, NS>(pr, i / blocks, (i % blocks) * Vec<T>::W);
      });
    });
  };
  if (u.scalar_type() == at::kDouble)
    run(double(0));
  else
    run(float(0));
}

// Grads: du, ddelta, dz like u; dA_part (b, d, n), dD_part and dbias_part (b, d), dB_part and dC_part
// (groups, b, n, L) zero-filled: the channel blocks of a batch row are split into `groups` tasks, each adding
// its channels' share.
void bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
         const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
         const std::optional<at::Tensor>& bias, bool softplus, const at::Tensor& dout, int64_t chunk,
         at::Tensor& du, at::Tensor& ddelta, at::Tensor& dz, at::Tensor& dA_part, at::Tensor& dD_part,
         at::Tensor& dbias_part, at::Tensor& dB_part, at::Tensor& dC_part) {
  check_inputs(u, delta, A, B, C);
  TORCH_CHECK(chunk >= 1, "selective_scan_cpu: chunk must be >= 1");
  TORCH_CHECK(dB_part.is_contiguous() && dC_part.is_contiguous() && dA_part.is_contiguous() &&
                  dD_part.is_contiguous() && dbias_part.is_contiguous(),
              "selective_scan_cpu: partial-sum buffers must be contiguous");
  const int64_t groups = dB_part.size(0);
  auto run = [&](auto zero) {
    using T = decltype(zero);
    typedef typename Vec<T>::V V;
    constexpr int W = Vec<T>::W;
    auto pr = make_problem<T>(u, delta, A, B, C, D, z, bias, softplus);
    Grads<T> g;
    g.dout = Seq<T>(dout), g.du = Seq<T>(du), g.ddelta = Seq<T>(ddelta);
    if (z) g.dz = Seq<T>(dz);
    g.dA = dA_part.data_ptr<T>(), g.dD = dD_part.data_ptr<T>(), g.dbias = dbias_part.data_ptr<T>();
    T* dBp = dB_part.data_ptr<T>();
    T* dCp = dC_part.data_ptr<T>();
    const int64_t blocks = (pr.d + W - 1) / W, per_group = (blocks + groups - 1) / groups;
    const int64_t n = pr.n, L = pr.L;
    with_state_size<T>(n, [&](auto ns) {
      constexpr int NS = decltype(ns)::value;
      at::parallel_for(0, pr.b * groups, 1, [&](int64_t lo, int64_t hi) {
        std::vector<V> accB(L * n), accC(L * n);
        for (int64_t task = lo; task < hi; ++task) {
          const int64_t bi = task / groups, gi = task % groups;
          const int64_t first = gi * per_group, last = std::min(blocks, first + per_group);
          if (first >= last) continue;
          for (auto& v : accB) v = bcast<V>(T(0));
          for (auto& v : accC) v = bcast<V>(T(0));
          for (int64_t blk = first; blk < last; ++blk)
            bwd_block<T, NS>(pr, g, bi, blk * W, chunk, accB.data(), accC.data());
          T* oB = dBp + (gi * pr.b + bi) * n * L;  // (n, L) of this group and batch row
          T* oC = dCp + (gi * pr.b + bi) * n * L;
          for (int64_t t = 0; t < L; ++t)
            for (int64_t j = 0; j < n; ++j) {
              oB[j * L + t] += hsum<V, T>(accB[t * n + j]);
              oC[j * L + t] += hsum<V, T>(accC[t * n + j]);
            }
        }
      });
    });
  };
  if (u.scalar_type() == at::kDouble)
    run(double(0));
  else
    run(float(0));
}

}  // namespace

TORCH_LIBRARY(selective_scan_cpu, m) {
  m.def(
      "fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
      "bool delta_softplus, Tensor(a!) out) -> ()",
      [](const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
         const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
         const std::optional<at::Tensor>& bias, bool softplus, at::Tensor out) { fwd(u, delta, A, B, C, D, z, bias, softplus, out); });
  m.def(
      "bwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
      "bool delta_softplus, Tensor dout, int chunk, Tensor(a!) du, Tensor(b!) ddelta, Tensor(c!) dz, "
      "Tensor(d!) dA_part, Tensor(e!) dD_part, Tensor(f!) dbias_part, Tensor(g!) dB_part, Tensor(h!) dC_part) -> ()",
      [](const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
         const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
         const std::optional<at::Tensor>& bias, bool softplus, const at::Tensor& dout, int64_t chunk, at::Tensor du,
         at::Tensor ddelta, at::Tensor dz, at::Tensor dA_part, at::Tensor dD_part, at::Tensor dbias_part,
         at::Tensor dB_part, at::Tensor dC_part) {
        bwd(u, delta, A, B, C, D, z, bias, softplus, dout, chunk, du, ddelta, dz, dA_part, dD_part, dbias_part,
            dB_part, dC_part);
      });
}
