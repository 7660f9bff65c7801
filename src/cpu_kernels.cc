// Fused CPU kernels for LayerNorm and the exact (erf) GELU, forward and backward, for MindSpore `ops.Custom`
// (func_type "aot"). Built by src/cpu_kernels.py with g++ on first use; see that file for why and how.
//
// Every kernel has MindSpore's AOT signature: params holds the inputs then the outputs, all float32, contiguous.
// A kernel returns non-zero (MindSpore raises) when a tensor is not float32.
//
// Math (all in float32):
//   GELU(x)  = x * Phi(x), Phi(x) = 0.5 * (1 + erf(x / sqrt 2)), erf from Abramowitz-Stegun 7.1.26 (|error| <
//              1.5e-7, the same formula as ErfPolyGELU in src/tinybert_model.py, which exports to ONNX)
//   GELU'(x) = Phi(x) + x * exp(-x^2 / 2) / sqrt(2 pi)
//   LayerNorm over the last axis: y = (x - mean) * rstd * gamma + beta, rstd = 1 / sqrt(var + eps) (biased var)
//   its backward with xh = (x - mean) * rstd, g = dy * gamma:
//              dx = rstd * (g - mean(g) - xh * mean(g * xh)), dgamma = sum_rows dy * xh, dbeta = sum_rows dy
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

constexpr int kLanes = 8;  // independent partial sums, so the row reductions vectorize without reassociation

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
  const float *__restrict__ x = static_cast<const float *>(params[0]);
  float *__restrict__ y = static_cast<float *>(params[1]);
  const int64_t n = numel(ndims[0], shapes[0]);
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    y[i] = v * normal_cdf(v, exp_f(-0.5f * v * v));
  }
  return 0;
}

// x, dy -> dx
extern "C" int GeluBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                            void *) {
  if (nparam != 3 || !all_float32(nparam, dtypes)) return 1;
  const float *__restrict__ x = static_cast<const float *>(params[0]);
  const float *__restrict__ dy = static_cast<const float *>(params[1]);
  float *__restrict__ dx = static_cast<float *>(params[2]);
  const int64_t n = numel(ndims[0], shapes[0]);
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float e = exp_f(-0.5f * v * v);
    dx[i] = dy[i] * (normal_cdf(v, e) + v * e * 0.3989422804014327f);
  }
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
  for (int64_t r = 0; r < rows; ++r) layer_norm_row(x + r * h, gamma, beta, eps, h, y + r * h, mean + r, rstd + r);
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
  for (int64_t j = 0; j < h; ++j) dgamma[j] = dbeta[j] = 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    layer_norm_backward_row(dy + r * h, x + r * h, gamma, mean[r], rstd[r], h, dx + r * h, dgamma, dbeta);
  }
  return 0;
}
