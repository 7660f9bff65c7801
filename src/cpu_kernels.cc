// Fused CPU kernels for MindSpore `ops.Custom` (func_type "aot"): LayerNorm and the exact (erf) GELU, forward and
// backward, the padding-masked squared-error sum of the distillation losses with its gradient, and a dropout whose
// mask is a function of (seed, op, step, input). Built by src/cpu_kernels.py with g++ on first use; see that file for
// why and how.
//
// Every kernel has MindSpore's AOT signature: params holds the inputs then the outputs, contiguous, float32 except
// the dropout key (int64). A kernel returns non-zero (MindSpore raises) when a tensor has another dtype.
// (2: shapes that do not fit the kernel, 3: out of memory.)
// Threads: SetThreads(n) (called by src/cpu_kernels.py with the run's `threads`) lets a kernel split its rows over
// up to n threads when each gets at least kMinWorkPerThread elements. Results do not depend on n: element-wise
// kernels write each element once, and the row-summing ones (dgamma / dbeta, the masked sums) add their rows in
// fixed chunks whose bounds depend only on the shape, then add the chunks' sums in chunk order.
//
// Dropout (DropoutForward): keep element i iff the top 24 bits of hash(i, call key) < keep * 2^24, where the call
// key mixes the op's (seed, op id), the step set by SetDropoutStep and a fingerprint of the input. The mask is a
// function of those alone: not of the thread count, nor of the order in which MindSpore launches the ops, and a
// run resumed at step s draws the masks an uninterrupted run draws at step s.
//
// Math (all in float32):
//   GELU(x)  = x * Phi(x), Phi(x) = 0.5 * (1 + erf(x / sqrt 2)), erf from Abramowitz-Stegun 7.1.26 (|error| <
//              1.5e-7, the same formula as ErfPolyGELU in src/tinybert_model.py, which exports to ONNX)
//   GELU'(x) = Phi(x) + x * exp(-x^2 / 2) / sqrt(2 pi)
//   LayerNorm over the last axis: y = (x - mean) * rstd * gamma + beta, rstd = 1 / sqrt(var + eps) (biased var)
//   its backward with xh = (x - mean) * rstd, g = dy * gamma:
//              dx = rstd * (g - mean(g) - xh * mean(g * xh)), dgamma = sum_rows dy * xh, dbeta = sum_rows dy
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr int kLanes = 8;  // independent partial sums, so the row reductions vectorize without reassociation
constexpr int64_t kMinWorkPerThread = 1 << 16;
constexpr int64_t kMaxChunks = 256;
int g_threads = 1;

// How many parts to split `items` items of `work` elements each into.
int parts_for(int64_t items, int64_t work) {
  const int64_t by_work = std::max<int64_t>(1, items * work / kMinWorkPerThread);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({static_cast<int64_t>(g_threads), by_work, items})));
}

// How many chunks a row-summing kernel adds `items` items of `work` elements each in: from the shape only (one per
// kMinWorkPerThread elements, at most kMaxChunks), never from the thread count.
int chunks_for(int64_t items, int64_t work) {
  const int64_t by_work = std::max<int64_t>(1, items * work / kMinWorkPerThread);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({kMaxChunks, by_work, items})));
}

// body(begin, end, part) over [0, items) in `parts` contiguous chunks; the last chunk runs on the calling thread,
// and a chunk whose thread cannot be started runs there too.
template <class Body>
void run_parts(int64_t items, int parts, const Body &body) {
  const int64_t chunk = (items + parts - 1) / parts;
  std::vector<std::thread> pool;
  for (int p = 0; p + 1 < parts; ++p) {
    const int64_t b = p * chunk, e = std::min(items, b + chunk);
    try {
      pool.emplace_back([&body, b, e, p] { body(b, e, p); });
    } catch (...) {
      body(b, e, p);
    }
  }
  body(std::min(items, (parts - 1) * chunk), items, parts - 1);
  for (auto &t : pool) t.join();
}

// body(begin, end, chunk) for each of `chunks` fixed chunks of [0, items) (chunk c holds items [c * size, (c + 1) *
// size), size = ceil(items / chunks); trailing chunks may be empty); the chunks are spread over up to g_threads
// threads, which changes who computes a chunk, never what it holds.
template <class Body>
void run_chunks(int64_t items, int chunks, const Body &body) {
  const int64_t size = (items + chunks - 1) / chunks;
  run_parts(chunks, std::min(g_threads, chunks), [&](int64_t cb, int64_t ce, int) {
    for (int64_t c = cb; c < ce; ++c) {
      body(std::min(items, c * size), std::min(items, (c + 1) * size), static_cast<int>(c));
    }
  });
}

bool all_float32(int nparam, const char **dtypes) {
  for (int i = 0; i < nparam; ++i) {
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
  }
  return true;
}

int64_t numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

// exp(x) for x in [-87, 88]: x = n ln2 + r, |r| <= ln2 / 2, degree-6 Taylor polynomial for exp(r) (relative error
// below 2e-7), 2^n built in the exponent bits. Branch-free, so the loops that call it vectorize.
inline float exp_f(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;  // ln2 split in two parts
  const float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r / 720)))));
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// Phi(x) given e = exp(-x^2 / 2): erfc(|x| / sqrt 2) = poly(t) * e with t = 1 / (1 + p |x| / sqrt 2).
inline float normal_cdf(float x, float e) {
  const float z = std::fabs(x) * 0.7071067811865476f;
  const float t = 1.0f / (1.0f + 0.3275911f * z);
  const float q = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f +
                  t * 1.061405429f)))) * e;
  return x >= 0.0f ? 1.0f - 0.5f * q : 0.5f * q;
}

float row_sum(const float *x, int64_t h) {
  float acc[kLanes] = {0};
  int64_t j = 0;
  for (; j + kLanes <= h; j += kLanes) {
    for (int k = 0; k < kLanes; ++k) acc[k] += x[j + k];
  }
  float s = 0.0f;
  for (; j < h; ++j) s += x[j];
  for (int k = 0; k < kLanes; ++k) s += acc[k];
  return s;
}

float row_centered_sq(const float *x, float mean, int64_t h) {
  float acc[kLanes] = {0};
  int64_t j = 0;
  for (; j + kLanes <= h; j += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const float d = x[j + k] - mean;
      acc[k] += d * d;
    }
  }
  float s = 0.0f;
  for (; j < h; ++j) s += (x[j] - mean) * (x[j] - mean);
  for (int k = 0; k < kLanes; ++k) s += acc[k];
  return s;
}

void gelu_range(const float *__restrict__ x, int64_t n, float *__restrict__ y) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    y[i] = v * normal_cdf(v, exp_f(-0.5f * v * v));
  }
}

void gelu_grad_range(const float *__restrict__ x, const float *__restrict__ dy, int64_t n, float *__restrict__ dx) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float e = exp_f(-0.5f * v * v);
    dx[i] = dy[i] * (normal_cdf(v, e) + v * e * 0.3989422804014327f);
  }
}

// One row of LayerNorm forward; returns (mean, rstd) through m, rs.
void layer_norm_row(const float *__restrict__ x, const float *__restrict__ gamma, const float *__restrict__ beta,
                    float eps, int64_t h, float *__restrict__ y, float *m, float *rs) {
  const float mean = row_sum(x, h) / static_cast<float>(h);
  const float r = 1.0f / std::sqrt(row_centered_sq(x, mean, h) / static_cast<float>(h) + eps);
  for (int64_t j = 0; j < h; ++j) y[j] = (x[j] - mean) * r * gamma[j] + beta[j];
  *m = mean;
  *rs = r;
}

// One row of LayerNorm backward: writes dx, adds the row's share to dgamma and dbeta.
void layer_norm_backward_row(const float *__restrict__ dy, const float *__restrict__ x,
                             const float *__restrict__ gamma, float m, float rs, int64_t h, float *__restrict__ dx,
                             float *__restrict__ dgamma, float *__restrict__ dbeta) {
  float sum_g[kLanes] = {0}, sum_gx[kLanes] = {0};
  int64_t j = 0;
  for (; j + kLanes <= h; j += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const float xh = (x[j + k] - m) * rs, g = dy[j + k] * gamma[j + k];
      sum_g[k] += g;
      sum_gx[k] += g * xh;
    }
  }
  float a = 0.0f, c = 0.0f;
  for (; j < h; ++j) {
    const float xh = (x[j] - m) * rs, g = dy[j] * gamma[j];
    a += g;
    c += g * xh;
  }
  for (int k = 0; k < kLanes; ++k) {
    a += sum_g[k];
    c += sum_gx[k];
  }
  a /= static_cast<float>(h);
  c /= static_cast<float>(h);
  for (int64_t i = 0; i < h; ++i) {
    const float xh = (x[i] - m) * rs;
    dx[i] = rs * (dy[i] * gamma[i] - a - xh * c);
    dgamma[i] += dy[i] * xh;
    dbeta[i] += dy[i];
  }
}

}  // namespace

// x -> y
extern "C" int GeluForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                           void *) {
  if (nparam != 2 || !all_float32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const int64_t n = numel(ndims[0], shapes[0]);
  run_parts(n, parts_for(n, 1), [&](int64_t b, int64_t e, int) { gelu_range(x + b, e - b, y + b); });
  return 0;
}

// x, dy -> dx
extern "C" int GeluBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                            void *) {
  if (nparam != 3 || !all_float32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *dy = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[2]);
  const int64_t n = numel(ndims[0], shapes[0]);
  run_parts(n, parts_for(n, 1), [&](int64_t b, int64_t e, int) { gelu_grad_range(x + b, dy + b, e - b, dx + b); });
  return 0;
}

// x [..., h], gamma [h], beta [h], eps [1] -> y [..., h], mean [...], rstd [...]
extern "C" int LayerNormForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                                void *) {
  if (nparam != 7 || !all_float32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]);
  const float *beta = static_cast<const float *>(params[2]);
  const float eps = *static_cast<const float *>(params[3]);
  float *y = static_cast<float *>(params[4]);
  float *mean = static_cast<float *>(params[5]);
  float *rstd = static_cast<float *>(params[6]);
  const int64_t h = shapes[0][ndims[0] - 1];
  const int64_t rows = numel(ndims[0], shapes[0]) / h;
  run_parts(rows, parts_for(rows, h), [&](int64_t b, int64_t e, int) {
    for (int64_t r = b; r < e; ++r) layer_norm_row(x + r * h, gamma, beta, eps, h, y + r * h, mean + r, rstd + r);
  });
  return 0;
}

// dy [..., h], x [..., h], gamma [h], mean [...], rstd [...] -> dx [..., h], dgamma [h], dbeta [h]
extern "C" int LayerNormBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                 void *, void *) {
  if (nparam != 8 || !all_float32(nparam, dtypes)) return 1;
  const float *dy = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  const float *gamma = static_cast<const float *>(params[2]);
  const float *mean = static_cast<const float *>(params[3]);
  const float *rstd = static_cast<const float *>(params[4]);
  float *dx = static_cast<float *>(params[5]);
  float *dgamma = static_cast<float *>(params[6]);
  float *dbeta = static_cast<float *>(params[7]);
  const int64_t h = shapes[0][ndims[0] - 1];
  const int64_t rows = numel(ndims[0], shapes[0]) / h;
  const int chunks = chunks_for(rows, h);
  std::vector<float> partial;
  try {
    partial.assign(static_cast<size_t>(chunks) * 2 * h, 0.0f);  // per chunk: dgamma, dbeta
  } catch (...) {
    return 3;
  }
  run_chunks(rows, chunks, [&](int64_t b, int64_t e, int c) {
    float *pg = partial.data() + static_cast<size_t>(c) * 2 * h;
    for (int64_t r = b; r < e; ++r) {
      layer_norm_backward_row(dy + r * h, x + r * h, gamma, mean[r], rstd[r], h, dx + r * h, pg, pg + h);
    }
  });
  for (int64_t j = 0; j < h; ++j) dgamma[j] = dbeta[j] = 0.0f;
  for (int p = 0; p < chunks; ++p) {
    const float *pg = partial.data() + static_cast<size_t>(p) * 2 * h;
    for (int64_t j = 0; j < h; ++j) {
      dgamma[j] += pg[j];
      dbeta[j] += pg[h + j];
    }
  }
  return 0;
}

// Squared error against a constant target with a 0/1 weight broadcast over one axis (the padding-masked
// distillation MSE numerators): s, t [A, M, C] viewed flat, w [A, C] broadcast over M -> sum (s - t)^2 w [1].
// The view is found from the shapes: w has 1 where s has M (attention scores: s [B, H, L, L], w [B, 1, L, L];
// hidden states: s [B, L, D], w [B, L, 1], so C = 1). Row sums in float lanes, the total in double.
namespace {

bool same_shape(int nd, const int64_t *s, int tnd, const int64_t *t) {
  if (nd != tnd) return false;
  for (int i = 0; i < nd; ++i)
    if (s[i] != t[i]) return false;
  return true;
}

bool broadcast_view(int nd, const int64_t *s, int wnd, const int64_t *w, int64_t *a, int64_t *m, int64_t *c) {
  if (nd != wnd) return false;
  int axis = -1;
  for (int i = 0; i < nd; ++i) {
    if (w[i] == s[i]) continue;
    if (w[i] != 1 || axis >= 0) return false;
    axis = i;
  }
  if (axis < 0) axis = nd;  // same shapes: M = 1
  *a = numel(axis, s);
  *m = axis < nd ? s[axis] : 1;
  *c = axis < nd ? numel(nd - axis - 1, s + axis + 1) : 1;
  return true;
}

// sum_j (s_j - t_j)^2 * (w ? w_j : 1)
float sq_err_sum(const float *__restrict__ s, const float *__restrict__ t, const float *__restrict__ w, int64_t n) {
  float acc[kLanes] = {0};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float d = s[j + l] - t[j + l];
      acc[l] += w ? d * d * w[j + l] : d * d;
    }
  }
  float total = 0.0f;
  for (; j < n; ++j) total += (s[j] - t[j]) * (s[j] - t[j]) * (w ? w[j] : 1.0f);
  for (int l = 0; l < kLanes; ++l) total += acc[l];
  return total;
}

// ds_j = g * (s_j - t_j) * (w ? w_j : 1)
void sq_err_grad(const float *__restrict__ s, const float *__restrict__ t, const float *__restrict__ w, float g,
                 int64_t n, float *__restrict__ ds) {
  if (w) {
    for (int64_t j = 0; j < n; ++j) ds[j] = g * (s[j] - t[j]) * w[j];
  } else {
    for (int64_t j = 0; j < n; ++j) ds[j] = g * (s[j] - t[j]);
  }
}

}  // namespace

// s, t, w -> sum [1]
extern "C" int MaskedSquaredErrorSum(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                     void *, void *) {
  if (nparam != 4 || !all_float32(nparam, dtypes)) return 1;
  const float *s = static_cast<const float *>(params[0]);
  const float *t = static_cast<const float *>(params[1]);
  const float *w = static_cast<const float *>(params[2]);
  float *out = static_cast<float *>(params[3]);
  int64_t a, m, c;
  if (!same_shape(ndims[0], shapes[0], ndims[1], shapes[1])) return 2;  // t is read with s's layout
  if (!broadcast_view(ndims[0], shapes[0], ndims[2], shapes[2], &a, &m, &c)) return 2;
  const int chunks = chunks_for(a, m * c);
  std::vector<double> partial;
  try {
    partial.assign(chunks, 0.0);
  } catch (...) {
    return 3;
  }
  run_chunks(a, chunks, [&](int64_t b, int64_t e, int p) {
    double total = 0.0;
    for (int64_t i = b; i < e; ++i) {
      if (c == 1) {  // one weight per row of M values
        total += static_cast<double>(w[i]) * sq_err_sum(s + i * m, t + i * m, nullptr, m);
        continue;
      }
      for (int64_t k = 0; k < m; ++k) total += sq_err_sum(s + (i * m + k) * c, t + (i * m + k) * c, w + i * c, c);
    }
    partial[p] = total;
  });
  double total = 0.0;
  for (double v : partial) total += v;  // chunk order
  out[0] = static_cast<float>(total);
  return 0;
}

// s, t, w, dout [1] -> ds = 2 (s - t) w dout
extern "C" int MaskedSquaredErrorGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                      void *, void *) {
  if (nparam != 5 || !all_float32(nparam, dtypes)) return 1;
  const float *s = static_cast<const float *>(params[0]);
  const float *t = static_cast<const float *>(params[1]);
  const float *w = static_cast<const float *>(params[2]);
  const float g = 2.0f * static_cast<const float *>(params[3])[0];
  float *ds = static_cast<float *>(params[4]);
  int64_t a, m, c;
  if (!same_shape(ndims[0], shapes[0], ndims[1], shapes[1])) return 2;
  if (!broadcast_view(ndims[0], shapes[0], ndims[2], shapes[2], &a, &m, &c)) return 2;
  run_parts(a, parts_for(a, m * c), [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      if (c == 1) {
        sq_err_grad(s + i * m, t + i * m, nullptr, g * w[i], m, ds + i * m);
        continue;
      }
      for (int64_t k = 0; k < m; ++k) {
        const int64_t base = (i * m + k) * c;
        sq_err_grad(s + base, t + base, w + i * c, g, c, ds + base);
      }
    }
  });
  return 0;
}

// Dropout with a counter-based mask: x [n] float32, p [1] float32 (drop probability), key [2] int64 (seed, op id)
// -> y [n] = x * m, m [n] = (kept ? 1 / (1 - p) : 0) (the backward is dy * m).
namespace {

std::atomic<int64_t> g_dropout_step{0};

inline uint64_t mix64(uint64_t z) {  // splitmix64's finalizer
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline uint32_t mix32(uint32_t x) {  // a 32-bit integer hash (two xorshift-multiply rounds)
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// The 64-bit key of one launch: seed, op id, step, element count and the bits of kFingerprint evenly spaced
// elements of x, mixed in turn. The input's fingerprint tells apart the calls of one op within a step (a width
// supernet runs a layer's dropout once per width in one graph) without depending on the order they run in.
constexpr int64_t kFingerprint = 64;

uint64_t dropout_call_key(int64_t seed, int64_t id, const float *x, int64_t n) {
  uint64_t k = mix64(static_cast<uint64_t>(seed));
  k = mix64(k ^ static_cast<uint64_t>(id));
  k = mix64(k ^ static_cast<uint64_t>(g_dropout_step.load()));
  k = mix64(k ^ static_cast<uint64_t>(n));
  const int64_t samples = std::min(n, kFingerprint);
  for (int64_t j = 0; j < samples; ++j) {
    uint32_t bits;
    std::memcpy(&bits, x + j * n / samples, sizeof bits);
    k = mix64(k ^ bits);
  }
  return k;
}

void dropout_range(const float *__restrict__ x, int64_t begin, int64_t end, uint32_t k0, uint32_t k1,
                   uint32_t threshold, float scale, float *__restrict__ y, float *__restrict__ m) {
  for (int64_t i = begin; i < end; ++i) {
    const uint32_t h = mix32(mix32(static_cast<uint32_t>(i) ^ k0) + k1);
    const float keep = (h >> 8) < threshold ? scale : 0.0f;
    m[i] = keep;
    y[i] = x[i] * keep;
  }
}

}  // namespace

extern "C" int DropoutForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                              void *) {
  if (nparam != 5) return 1;
  if (std::strcmp(dtypes[0], "float32") != 0 || std::strcmp(dtypes[1], "float32") != 0 ||
      std::strcmp(dtypes[2], "int64") != 0 || std::strcmp(dtypes[3], "float32") != 0 ||
      std::strcmp(dtypes[4], "float32") != 0) {
    return 1;
  }
  const float *x = static_cast<const float *>(params[0]);
  const float p = *static_cast<const float *>(params[1]);
  const int64_t *key = static_cast<const int64_t *>(params[2]);
  float *y = static_cast<float *>(params[3]);
  float *m = static_cast<float *>(params[4]);
  const int64_t n = numel(ndims[0], shapes[0]);
  if (numel(ndims[2], shapes[2]) != 2 || n > (int64_t{1} << 32) || !(p >= 0.0f && p < 1.0f)) return 2;
  const uint64_t k = dropout_call_key(key[0], key[1], x, n);
  const uint32_t k0 = static_cast<uint32_t>(k), k1 = static_cast<uint32_t>(k >> 32);
  const double keep = 1.0 - static_cast<double>(p);
  const uint32_t threshold = static_cast<uint32_t>(std::lround(keep * 16777216.0));  // keep * 2^24
  const float scale = static_cast<float>(1.0 / keep);
  run_parts(n, parts_for(n, 1), [&](int64_t b, int64_t e, int) {
    dropout_range(x, b, e, k0, k1, threshold, scale, y, m);
  });
  return 0;
}

// The step the next dropout masks belong to (the trainer sets it before each optimizer step).
extern "C" void SetDropoutStep(int64_t step) { g_dropout_step.store(step); }

// Threads a kernel may use from now on (>= 1); returns the previous value.
extern "C" int SetThreads(int n) {
  const int previous = g_threads;
  g_threads = n < 1 ? 1 : n;
  return previous;
}
