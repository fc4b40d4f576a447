#include "reference.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

uint16_t ref_to_bits(float x, mirasol_dtype dtype) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  if (dtype == MIRASOL_BF16) {
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
  /* float -> IEEE half, round to nearest even (normals, subnormals, overflow to inf) */
  uint32_t sign = (u >> 16) & 0x8000u, mag = u & 0x7fffffffu;
  if (mag >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (mag > 0x7f800000u ? 0x200u : 0));
  if (mag >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds past 65504 */
  if (mag < 0x38800000u) { /* subnormal half: value = m * 2^-24 */
    float f;
    memcpy(&f, &mag, sizeof f);
    return (uint16_t)(sign | (uint32_t)lrintf(f * 16777216.0f));
  }
  uint32_t half = ((mag >> 13) - (112u << 10));
  uint32_t rest = mag & 0x1fffu;
  half += rest > 0x1000u || (rest == 0x1000u && (half & 1u));
  return (uint16_t)(sign | half);
}

float ref_from_bits(uint16_t bits, mirasol_dtype dtype) {
  uint32_t u;
  if (dtype == MIRASOL_BF16) {
    u = (uint32_t)bits << 16;
  } else {
    uint32_t sign = (uint32_t)(bits & 0x8000u) << 16, exp = (bits >> 10) & 0x1fu,
             man = bits & 0x3ffu;
    if (exp == 0) {
      float f = ldexpf((float)man, -24);
      return sign ? -f : f;
    }
    u = sign | (exp == 31 ? 0x7f800000u | (man << 13) : ((exp + 112u) << 23) | (man << 13));
  }
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

float ref_round(double x, int dtype) {
  if (dtype == REF_ORACLE) return (float)x;
  return ref_from_bits(ref_to_bits((float)x, (mirasol_dtype)dtype), (mirasol_dtype)dtype);
}

/* In the dtype, a value is what the 16-bit tensor would hold; the oracle keeps it. */
static double keep(double x, int dtype) { return dtype == REF_ORACLE ? x : ref_round(x, dtype); }

/* float32 accumulation in the dtype's emulation, double for the oracle */
static double accumulate(double acc, double term, int dtype) {
  return dtype == REF_ORACLE ? acc + term : (double)((float)acc + (float)term);
}

void ref_attention_row(const float *q, const float *k, const float *v, int key_stride,
                       const unsigned char *visible, int n_keys, int d, double scale,
                       int dtype, double *out, double *lse) {
  double *scores = malloc(sizeof(double) * (size_t)(n_keys > 0 ? n_keys : 1));
  double max = -INFINITY;
  for (int j = 0; j < n_keys; j++) {
    if (!visible[j]) continue;
    double dot = 0;
    for (int c = 0; c < d; c++) dot = accumulate(dot, (double)q[c] * k[j * key_stride + c], dtype);
    scores[j] = keep(keep(dot, dtype) * scale, dtype);
    if (scores[j] > max) max = scores[j];
  }
  for (int c = 0; c < d; c++) out[c] = 0;
  if (max == -INFINITY) {
    *lse = -INFINITY;
    free(scores);
    return;
  }
  double sum = 0;
  for (int j = 0; j < n_keys; j++)
    if (visible[j]) sum += exp(scores[j] - max);
  *lse = max + log(sum);
  for (int j = 0; j < n_keys; j++) {
    if (!visible[j]) continue;
    double p = keep(dtype == REF_ORACLE ? exp(scores[j] - max) / sum
                                        : (float)(expf((float)(scores[j] - max)) / (float)sum),
                    dtype);
    for (int c = 0; c < d; c++) out[c] = accumulate(out[c], p * v[j * key_stride + c], dtype);
  }
  for (int c = 0; c < d; c++) out[c] = keep(out[c], dtype);
  free(scores);
}

void ref_token_pool_segment(const float *x, const float *logits, int n, int d, int m,
                            int dtype, double *out) {
  for (int i = 0; i < m * d; i++) out[i] = 0;
  for (int j = 0; j < m; j++) {
    double max = -INFINITY, sum = 0;
    for (int t = 0; t < n; t++) max = fmax(max, logits[t * m + j]);
    for (int t = 0; t < n; t++) sum += exp(logits[t * m + j] - max);
    for (int t = 0; t < n; t++) {
      double w = keep(dtype == REF_ORACLE
                          ? exp(logits[t * m + j] - max) / sum
                          : (float)(expf((float)(logits[t * m + j] - max)) / (float)sum),
                      dtype);
      for (int c = 0; c < d; c++) out[j * d + c] = accumulate(out[j * d + c], w * x[t * d + c], dtype);
    }
    for (int c = 0; c < d; c++) out[j * d + c] = keep(out[j * d + c], dtype);
  }
}
