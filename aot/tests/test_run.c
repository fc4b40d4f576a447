/* Every op of the library run on the GPU against the C reference, for each dtype built:
   err(kernel) <= 2 err(reference in dtype) + floor against a double oracle (DESIGN.md
   section 5), and the same -inf log-sum-exp and zeros for rows that see no key.
   Exit code 77 (ctest: skipped) where there is no driver, no device, or no kernel for
   the device's arch in this build. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_driver.h"
#include "reference.h"
#include "variant.h"

#define SKIP 77

static const mirasol_cuda *cu;
static int failures, ran;

static double unit_roundoff(mirasol_dtype dtype) {
  return dtype == MIRASOL_BF16 ? ldexp(1, -8) : ldexp(1, -11);
}

/* Host values in the dtype (already rounded), and their device copy. */
typedef struct {
  float *host;
  CUdeviceptr device;
  size_t n;
} tensor;

static unsigned rng = 12345u;
static float uniform(void) { /* in [-1, 1) */
  rng = rng * 1664525u + 1013904223u;
  return (float)(rng >> 8) / (float)(1u << 23) - 1.0f;
}

static void die(CUresult r, const char *what) {
  const char *msg = "?";
  cu->GetErrorString(r, &msg);
  fprintf(stderr, "%s: %s\n", what, msg);
  exit(1);
}

static tensor make(size_t n, mirasol_dtype dtype, float spread) {
  tensor t = {calloc(n ? n : 1, sizeof(float)), 0, n};
  uint16_t *bits = calloc(n ? n : 1, sizeof(uint16_t));
  for (size_t i = 0; i < n; i++) {
    bits[i] = ref_to_bits(spread * uniform(), dtype);
    t.host[i] = ref_from_bits(bits[i], dtype);
  }
  CUresult r = cu->MemAlloc(&t.device, (n ? n : 1) * sizeof(uint16_t));
  if (r != CUDA_SUCCESS) die(r, "cuMemAlloc");
  if (n && (r = cu->MemcpyHtoD(t.device, bits, n * sizeof(uint16_t))) != CUDA_SUCCESS)
    die(r, "cuMemcpyHtoD");
  free(bits);
  return t;
}

static CUdeviceptr device_buffer(size_t bytes, const void *init) {
  CUdeviceptr p;
  CUresult r = cu->MemAlloc(&p, bytes ? bytes : 16);
  if (r != CUDA_SUCCESS) die(r, "cuMemAlloc");
  if (init && bytes && (r = cu->MemcpyHtoD(p, init, bytes)) != CUDA_SUCCESS)
    die(r, "cuMemcpyHtoD");
  return p;
}

static float *download(CUdeviceptr p, size_t n, int is_16bit, mirasol_dtype dtype) {
  float *out = calloc(n ? n : 1, sizeof(float));
  void *raw = calloc(n ? n : 1, is_16bit ? 2 : 4);
  CUresult r = cu->MemcpyDtoH(raw, p, n * (is_16bit ? 2 : 4));
  if (r != CUDA_SUCCESS) die(r, "cuMemcpyDtoH");
  for (size_t i = 0; i < n; i++)
    out[i] = is_16bit ? ref_from_bits(((uint16_t *)raw)[i], dtype) : ((float *)raw)[i];
  free(raw);
  return out;
}

/* Compares the kernel's rows with the oracle's under the parity rule. */
typedef struct {
  double err, ref_err, magnitude, lse_err;
  int lse_mismatch;
} tally;

static void add_row(tally *t, const float *got, const double *oracle, const double *ref,
                    int d, float got_lse, double oracle_lse) {
  for (int c = 0; c < d; c++) {
    t->err = fmax(t->err, fabs(got[c] - oracle[c]));
    t->ref_err = fmax(t->ref_err, fabs(ref[c] - oracle[c]));
    t->magnitude = fmax(t->magnitude, fabs(oracle[c]));
  }
  if (isinf(oracle_lse) || isinf(got_lse)) t->lse_mismatch |= got_lse != oracle_lse;
  else t->lse_err = fmax(t->lse_err, fabs(got_lse - oracle_lse) / fmax(1, fabs(oracle_lse)));
}

static void verdict(const char *name, mirasol_dtype dtype, const tally *t) {
  double allowed = 2 * t->ref_err + unit_roundoff(dtype) * fmax(1, t->magnitude);
  /* lse is float32 from float32 scores: a few float32 roundings, relative */
  int ok = t->err <= allowed && !t->lse_mismatch && t->lse_err <= 1e-4;
  printf("%-4s %-5s %-28s err %.3g allowed %.3g (reference %.3g) lse err %.2g%s\n",
         ok ? "ok" : "FAIL", dtype == MIRASOL_BF16 ? "bf16" : "fp16", name, t->err, allowed,
         t->ref_err, t->lse_err, t->lse_mismatch ? " (-inf rows differ)" : "");
  failures += !ok;
  ran++;
}

static int launched(mirasol_status s, const char *name) {
  if (s == MIRASOL_ERROR_NOT_COMPILED) {
    printf("skip %s: %s\n", name, mirasol_last_error());
    return 0;
  }
  if (s != MIRASOL_SUCCESS) {
    printf("FAIL %s: %s: %s\n", name, mirasol_status_string(s), mirasol_last_error());
    failures++;
    return 0;
  }
  CUresult r = cu->CtxSynchronize();
  if (r != CUDA_SUCCESS) die(r, name);
  return 1;
}

static void chunked(mirasol_dtype dtype, int d, int with_lengths) {
  const int B = 2, H = 4, HKV = 2, N = 300, C = 64;
  const int32_t lens[2] = {300, 171};
  tensor q = make((size_t)B * H * N * d, dtype, 2), k = make((size_t)B * HKV * N * d, dtype, 2),
         v = make((size_t)B * HKV * N * d, dtype, 1);
  CUdeviceptr o = device_buffer((size_t)B * H * N * d * 2, NULL);
  CUdeviceptr lse = device_buffer((size_t)B * H * N * 4, NULL);
  CUdeviceptr dlens = device_buffer(sizeof lens, lens);
  double scale = 1 / sqrt((double)d);
  const char *name = with_lengths ? "chunked attention, lengths" : "chunked attention";
  if (!launched(mirasol_chunked_attention_fwd(
                    NULL, dtype, (void *)q.device, (void *)k.device, (void *)v.device,
                    (void *)o, (float *)lse, with_lengths ? (int32_t *)dlens : NULL, B, H, HKV,
                    N, d, C, (float)scale),
                name))
    return;
  float *got = download(o, (size_t)B * H * N * d, 1, dtype);
  float *got_lse = download(lse, (size_t)B * H * N, 0, dtype);
  double *oracle = malloc(sizeof(double) * d), *ref = malloc(sizeof(double) * d), ol, rl;
  unsigned char *visible = malloc(N);
  tally t = {0};
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++)
      for (int i = 0; i < N; i++) {
        int len = with_lengths ? lens[b] : N;
        for (int j = 0; j < N; j++) visible[j] = i < len && j < len && j / C <= i / C;
        size_t row = (((size_t)b * H + h) * N + i) * d;
        size_t kv = ((size_t)b * HKV + h / (H / HKV)) * N * d;
        ref_attention_row(q.host + row, k.host + kv, v.host + kv, d, visible, N, d, scale,
                          REF_ORACLE, oracle, &ol);
        ref_attention_row(q.host + row, k.host + kv, v.host + kv, d, visible, N, d, scale,
                          dtype, ref, &rl);
        add_row(&t, got + row, oracle, ref, d, got_lse[row / d], ol);
      }
  verdict(name, dtype, &t);
}

static void cross(mirasol_dtype dtype, int d, int causal) {
  enum { S = 3, H = 4, HKV = 2 };
  const int32_t q_lens[S] = {20, 6, 1}, k_lens[S] = {5, 0, 33};
  int32_t cu_q[S + 1] = {0}, cu_k[S + 1] = {0};
  for (int s = 0; s < S; s++) cu_q[s + 1] = cu_q[s] + q_lens[s], cu_k[s + 1] = cu_k[s] + k_lens[s];
  const int TQ = cu_q[S], TK = cu_k[S];
  tensor q = make((size_t)TQ * H * d, dtype, 2), k = make((size_t)TK * HKV * d, dtype, 2),
         v = make((size_t)TK * HKV * d, dtype, 1);
  CUdeviceptr o = device_buffer((size_t)TQ * H * d * 2, NULL);
  CUdeviceptr lse = device_buffer((size_t)H * TQ * 4, NULL);
  CUdeviceptr dcu_q = device_buffer(sizeof cu_q, cu_q), dcu_k = device_buffer(sizeof cu_k, cu_k);
  double scale = 1 / sqrt((double)d);
  const char *name = causal ? "cross-attention, causal" : "cross-attention";
  if (!launched(mirasol_cross_attention_fwd(NULL, dtype, (void *)q.device, (void *)k.device,
                                            (void *)v.device, (void *)o, (float *)lse,
                                            (int32_t *)dcu_q, (int32_t *)dcu_k, S, TQ, TK, 20,
                                            33, H, HKV, d, causal, (float)scale),
                name))
    return;
  float *got = download(o, (size_t)TQ * H * d, 1, dtype);
  float *got_lse = download(lse, (size_t)H * TQ, 0, dtype);
  double *oracle = malloc(sizeof(double) * d), *ref = malloc(sizeof(double) * d), ol, rl;
  unsigned char visible[64];
  tally t = {0};
  for (int s = 0; s < S; s++)
    for (int i = 0; i < q_lens[s]; i++)
      for (int h = 0; h < H; h++) {
        for (int j = 0; j < k_lens[s]; j++)
          visible[j] = !causal || j <= i + k_lens[s] - q_lens[s];
        size_t row = ((size_t)(cu_q[s] + i) * H + h) * d;
        size_t kv = ((size_t)cu_k[s] * HKV + h / (H / HKV)) * d;
        ref_attention_row(q.host + row, k.host + kv, v.host + kv, HKV * d, visible, k_lens[s],
                          d, scale, REF_ORACLE, oracle, &ol);
        ref_attention_row(q.host + row, k.host + kv, v.host + kv, HKV * d, visible, k_lens[s],
                          d, scale, dtype, ref, &rl);
        add_row(&t, got + row, oracle, ref, d, got_lse[(size_t)h * TQ + cu_q[s] + i], ol);
      }
  verdict(name, dtype, &t);
}

static void token_pool(mirasol_dtype dtype, const char *layout) {
  enum { S = 4, N = 40, D = 48, M = 8 };
  const int32_t lens[S] = {40, 0, 1, 17};
  int32_t cu[S + 1] = {0};
  int packed = strcmp(layout, "packed") == 0, with_lengths = strcmp(layout, "lengths") == 0;
  for (int s = 0; s < S; s++) cu[s + 1] = cu[s] + lens[s];
  int rows = packed ? cu[S] : S * N;
  tensor x = make((size_t)rows * D, dtype, 1), logits = make((size_t)rows * M, dtype, 4);
  CUdeviceptr out = device_buffer((size_t)S * M * D * 2, NULL);
  CUdeviceptr stats = device_buffer((size_t)S * 2 * M * 4, NULL);
  CUdeviceptr dcu = device_buffer(sizeof cu, cu), dlens = device_buffer(sizeof lens, lens);
  char name[64];
  snprintf(name, sizeof name, "token pooling, %s", layout);
  if (!launched(mirasol_token_pool_fwd(NULL, dtype, (void *)x.device, (void *)logits.device,
                                       (void *)out, (float *)stats,
                                       packed ? (int32_t *)dcu : NULL,
                                       with_lengths ? (int32_t *)dlens : NULL, S,
                                       packed ? rows : N, D, M),
                name))
    return;
  float *got = download(out, (size_t)S * M * D, 1, dtype);
  double oracle[M * D], ref[M * D];
  tally t = {0};
  for (int s = 0; s < S; s++) {
    int start = packed ? cu[s] : s * N, n = packed || with_lengths ? lens[s] : N;
    ref_token_pool_segment(x.host + (size_t)start * D, logits.host + (size_t)start * M, n, D,
                           M, REF_ORACLE, oracle);
    ref_token_pool_segment(x.host + (size_t)start * D, logits.host + (size_t)start * M, n, D,
                           M, dtype, ref);
    for (int j = 0; j < M; j++)
      add_row(&t, got + ((size_t)s * M + j) * D, oracle + j * D, ref + j * D, D, 0, 0);
  }
  verdict(name, dtype, &t);
}

int main(void) {
  if (!(cu = mirasol_cuda_driver())) {
    printf("skipped: %s\n", mirasol_last_error());
    return SKIP;
  }
  int count = 0;
  if (cu->DeviceGetCount(&count) != CUDA_SUCCESS || count == 0) {
    printf("skipped: no CUDA device\n");
    return SKIP;
  }
  CUdevice device;
  CUcontext context;
  CUresult r;
  if ((r = cu->DeviceGet(&device, 0)) != CUDA_SUCCESS) die(r, "cuDeviceGet");
  if ((r = cu->DevicePrimaryCtxRetain(&context, device)) != CUDA_SUCCESS)
    die(r, "cuDevicePrimaryCtxRetain");
  if ((r = cu->CtxSetCurrent(context)) != CUDA_SUCCESS) die(r, "cuCtxSetCurrent");

  int head_dim = 0;
  for (int i = 0; i < mirasol_num_kernels() && !head_dim; i++)
    if (mirasol_variants[i].kernel == MIRASOL_KERNEL_ATTN_FWD) head_dim = mirasol_kernel(i)->size;
  const mirasol_dtype dtypes[] = {MIRASOL_FP16, MIRASOL_BF16};
  for (int i = 0; i < 2; i++) {
    chunked(dtypes[i], head_dim, 0);
    chunked(dtypes[i], head_dim, 1);
    cross(dtypes[i], head_dim, 0);
    cross(dtypes[i], head_dim, 1);
    token_pool(dtypes[i], "padded");
    token_pool(dtypes[i], "lengths");
    token_pool(dtypes[i], "packed");
  }
  if (!ran && !failures) {
    printf("skipped: this build has no kernel for the device's arch\n");
    return SKIP;
  }
  printf("%d checks, %d failed\n", ran, failures);
  return failures != 0;
}
