/* The C API: arguments checked and turned into the kernels' parameters exactly as the
   Python launchers do (kernels/attention.py, kernels/token_pool.py), the variant picked
   for the device, its compiled-in assumptions checked, and the cubin launched. */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_driver.h"
#include "variant.h"

#define MAX_GRID_X 2147483647 /* CUDA's limit on a grid's x dimension */
#define MAX_CONTEXTS 16

static _Thread_local char last_error[512];

mirasol_status mirasol_fail(mirasol_status status, const char *format, ...) {
  va_list args;
  va_start(args, format);
  vsnprintf(last_error, sizeof last_error, format, args);
  va_end(args);
  return status;
}

const char *mirasol_last_error(void) { return last_error; }

const char *mirasol_status_string(mirasol_status status) {
  switch (status) {
    case MIRASOL_SUCCESS: return "success";
    case MIRASOL_ERROR_INVALID_ARGUMENT: return "invalid argument";
    case MIRASOL_ERROR_NOT_COMPILED: return "not compiled in this build";
    case MIRASOL_ERROR_NO_DRIVER: return "no CUDA driver or context";
    case MIRASOL_ERROR_CUDA: return "CUDA driver error";
  }
  return "unknown status";
}

int mirasol_num_kernels(void) { return mirasol_num_variants; }

const mirasol_kernel_info *mirasol_kernel(int i) {
  return i >= 0 && i < mirasol_num_variants ? &mirasol_variants[i].info : NULL;
}

/* ------------------------------------------------------------------ argument checks */

#define CHECK(cond, ...) \
  do { \
    if (!(cond)) return mirasol_fail(MIRASOL_ERROR_INVALID_ARGUMENT, __VA_ARGS__); \
  } while (0)

static mirasol_status check_tensor(const char *name, const void *p) {
  CHECK(p != NULL, "%s is NULL; expected a device pointer", name);
  CHECK((uintptr_t)p % 16 == 0, "%s = %p is not 16-byte aligned", name, p);
  return MIRASOL_SUCCESS;
}

static mirasol_status check_dtype(mirasol_dtype dtype) {
  CHECK(dtype == MIRASOL_FP16 || dtype == MIRASOL_BF16,
        "dtype = %d; expected MIRASOL_FP16 or MIRASOL_BF16", (int)dtype);
  return MIRASOL_SUCCESS;
}

/* The kernels index with int32: every tensor must have fewer than 2^31 elements. The
   sizes are non-negative ints; the product is formed factor by factor so it never
   overflows. */
static mirasol_status check_elements(const char *name, int64_t a, int64_t b, int64_t c,
                                     int64_t d) {
  const int64_t limit = (int64_t)1 << 31;
  int64_t factors[4] = {a, b, c, d}, product = 1;
  if (a == 0 || b == 0 || c == 0 || d == 0) return MIRASOL_SUCCESS;
  for (int i = 0; i < 4; i++) {
    CHECK(product < limit / factors[i] + (limit % factors[i] != 0),
          "%s has %lld x %lld x %lld x %lld elements; the kernels take fewer than 2^31", name,
          (long long)a, (long long)b, (long long)c, (long long)d);
    product *= factors[i]; /* < limit */
  }
  return MIRASOL_SUCCESS;
}

#define TRY(call) \
  do { \
    mirasol_status s_ = (call); \
    if (s_ != MIRASOL_SUCCESS) return s_; \
  } while (0)

static mirasol_status check_attention(mirasol_dtype dtype, const void *q, const void *k,
                                      const void *v, const void *o, const float *lse,
                                      int heads, int kv_heads, int head_dim, float scale) {
  TRY(check_dtype(dtype));
  TRY(check_tensor("q", q));
  TRY(check_tensor("k", k));
  TRY(check_tensor("v", v));
  TRY(check_tensor("o", o));
  TRY(check_tensor("lse", lse));
  CHECK(heads >= 1 && kv_heads >= 1, "heads = %d, kv_heads = %d; expected both >= 1", heads,
        kv_heads);
  CHECK(heads % kv_heads == 0, "heads = %d is not a multiple of kv_heads = %d", heads,
        kv_heads);
  CHECK(head_dim >= 16 && head_dim <= 256 && head_dim % 16 == 0,
        "head_dim = %d; expected a multiple of 16 in [16, 256]", head_dim);
  CHECK(isfinite(scale), "scale = %g; expected a finite number", (double)scale);
  return MIRASOL_SUCCESS;
}

/* The (batch, heads, rows, head_dim) strides of a contiguous 4-D tensor; a packed
   (total, heads, head_dim) tensor is read as its (1, heads, total, head_dim) view with
   batch stride 0, like the Python launchers pass it. */
static void strides_4d(int32_t *s, int heads, int rows, int head_dim, int packed) {
  s[0] = packed ? 0 : heads * rows * head_dim;
  s[1] = packed ? head_dim : rows * head_dim;
  s[2] = packed ? heads * head_dim : head_dim;
  s[3] = 1;
}

static void fill_attention(mirasol_attn_fwd_args *a, const void *q, const void *k,
                           const void *v, void *o, float *lse, const void *cu_q,
                           const void *cu_k, const void *lens, int heads, int kv_heads,
                           int q_rows, int k_rows, int head_dim, int chunk, float scale,
                           int packed) {
  int32_t s[4];
  a->Q = (uintptr_t)q;
  a->K = (uintptr_t)k;
  a->V = (uintptr_t)v;
  a->O = (uintptr_t)o;
  a->LSE = (uintptr_t)lse;
  /* An absent array is never read (its constexpr flag is off): q stands in. */
  a->CU_Q = (uintptr_t)(cu_q ? cu_q : q);
  a->CU_K = (uintptr_t)(cu_k ? cu_k : q);
  a->Q_LENS = a->K_LENS = (uintptr_t)(lens ? lens : q);
  strides_4d(s, heads, q_rows, head_dim, packed);
  a->stride_qb = s[0], a->stride_qh = s[1], a->stride_qn = s[2], a->stride_qd = s[3];
  a->stride_ob = s[0], a->stride_oh = s[1], a->stride_on = s[2], a->stride_od = s[3];
  strides_4d(s, kv_heads, k_rows, head_dim, packed);
  a->stride_kb = s[0], a->stride_kh = s[1], a->stride_kn = s[2], a->stride_kd = s[3];
  a->stride_vb = s[0], a->stride_vh = s[1], a->stride_vn = s[2], a->stride_vd = s[3];
  /* lse: (batch, heads, rows), or (1, heads, total) with batch stride 0 */
  a->stride_lb = packed ? 0 : heads * q_rows;
  a->stride_lh = q_rows;
  a->stride_ln = 1;
  a->H = heads;
  a->LQ = q_rows;
  a->LK = k_rows;
  a->HEAD_DIM = head_dim;
  a->CHUNK = chunk;
  a->GROUP = heads / kv_heads;
  /* No window (the C API's variants are compiled without one: WINDOW and SINKS stay 0)
     and one split over all keys (the split-KV forward is the Python launcher's). */
  a->SPLITS = 1;
  a->SPLIT_KEYS = 1 << 30;
  a->qk_scale = (float)((double)scale * MIRASOL_LOG2E);
}

static void init_request(mirasol_request *r, mirasol_kernel_id kernel, mirasol_dtype dtype,
                         int size, int layout, int rows, int64_t programs) {
  memset(r, 0, sizeof *r);
  r->kernel = kernel;
  r->dtype = dtype;
  r->size = size;
  r->layout = layout;
  r->rows = rows;
  r->programs = programs;
}

mirasol_status mirasol_request_chunked_attention(
    mirasol_request *r, mirasol_dtype dtype, const void *q, const void *k, const void *v,
    void *o, float *lse, const int32_t *lengths, int batch, int heads, int kv_heads,
    int seqlen, int head_dim, int chunk_size, float scale) {
  TRY(check_attention(dtype, q, k, v, o, lse, heads, kv_heads, head_dim, scale));
  if (lengths) TRY(check_tensor("lengths", lengths));
  CHECK(batch >= 0 && seqlen >= 0, "batch = %d, seqlen = %d; expected both >= 0", batch,
        seqlen);
  CHECK(chunk_size >= 1, "chunk_size = %d; expected >= 1", chunk_size);
  TRY(check_elements("q", batch, heads, seqlen, head_dim));
  init_request(r, MIRASOL_KERNEL_ATTN_FWD, dtype, head_dim,
               lengths ? MIRASOL_ATTN_FWD_CHUNKED_LENGTHS : MIRASOL_ATTN_FWD_CHUNKED, seqlen,
               (int64_t)batch * heads);
  fill_attention(&r->args.attn, q, k, v, o, lse, NULL, NULL, lengths, heads, kv_heads,
                 seqlen, seqlen, head_dim, chunk_size, scale, 0);
  return MIRASOL_SUCCESS;
}

mirasol_status mirasol_request_cross_attention(
    mirasol_request *r, mirasol_dtype dtype, const void *q, const void *k, const void *v,
    void *o, float *lse, const int32_t *cu_seqlens_q, const int32_t *cu_seqlens_k,
    int segments, int total_q, int total_k, int max_seqlen_q, int max_seqlen_k, int heads,
    int kv_heads, int head_dim, int causal, float scale) {
  TRY(check_attention(dtype, q, k, v, o, lse, heads, kv_heads, head_dim, scale));
  TRY(check_tensor("cu_seqlens_q", cu_seqlens_q));
  TRY(check_tensor("cu_seqlens_k", cu_seqlens_k));
  CHECK(segments >= 0 && total_q >= 0 && total_k >= 0,
        "segments = %d, total_q = %d, total_k = %d; expected all >= 0", segments, total_q,
        total_k);
  CHECK(max_seqlen_q >= 0 && max_seqlen_q <= total_q,
        "max_seqlen_q = %d; expected within [0, total_q = %d]", max_seqlen_q, total_q);
  CHECK(max_seqlen_k >= 0 && max_seqlen_k <= total_k,
        "max_seqlen_k = %d; expected within [0, total_k = %d]", max_seqlen_k, total_k);
  TRY(check_elements("q", 1, total_q, heads, head_dim));
  TRY(check_elements("k", 1, total_k, kv_heads, head_dim));
  init_request(r, MIRASOL_KERNEL_ATTN_FWD, dtype, head_dim,
               causal ? MIRASOL_ATTN_FWD_CROSS_CAUSAL : MIRASOL_ATTN_FWD_CROSS, max_seqlen_q,
               (int64_t)segments * heads);
  fill_attention(&r->args.attn, q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, NULL, heads,
                 kv_heads, total_q, total_k, head_dim, causal ? 1 : MIRASOL_NO_CHUNKS, scale, 1);
  /* Packed, LQ and LK are the longest segments: the kernel sizes its grid's row blocks by
     them (kernels/_program.py). */
  r->args.attn.LQ = max_seqlen_q;
  r->args.attn.LK = max_seqlen_k;
  return MIRASOL_SUCCESS;
}

mirasol_status mirasol_request_token_pool(
    mirasol_request *r, mirasol_dtype dtype, const void *x, const void *logits, void *out,
    float *stats, const int32_t *cu_seqlens, const int32_t *lengths, int segments,
    int seqlen, int dim, int num_tokens) {
  TRY(check_dtype(dtype));
  TRY(check_tensor("x", x));
  TRY(check_tensor("logits", logits));
  TRY(check_tensor("out", out));
  TRY(check_tensor("stats", stats));
  CHECK(!(cu_seqlens && lengths),
        "cu_seqlens and lengths are both given; expected one (packed or padded) or neither");
  if (cu_seqlens) TRY(check_tensor("cu_seqlens", cu_seqlens));
  if (lengths) TRY(check_tensor("lengths", lengths));
  CHECK(segments >= 0 && seqlen >= 0, "segments = %d, seqlen = %d; expected both >= 0",
        segments, seqlen);
  CHECK(dim >= 16 && dim % 16 == 0, "dim = %d; expected a positive multiple of 16", dim);
  CHECK(num_tokens >= 1 && num_tokens <= MIRASOL_MAX_OUTPUT_TOKENS,
        "num_tokens = %d; expected within [1, %d]", num_tokens, MIRASOL_MAX_OUTPUT_TOKENS);
  int packed = cu_seqlens != NULL;
  TRY(check_elements("x", packed ? 1 : segments, seqlen, dim, 1));
  TRY(check_elements("logits", packed ? 1 : segments, seqlen, num_tokens, 1));
  TRY(check_elements("out", segments, num_tokens, dim, 1));
  static const int buckets[] = MIRASOL_TOKEN_BUCKETS;
  int bucket = 0;
  while (buckets[bucket] < num_tokens) bucket++; /* the last is MIRASOL_MAX_OUTPUT_TOKENS */
  /* one program per block of features and segment */
  init_request(r, MIRASOL_KERNEL_TOKEN_POOL_FWD, dtype, buckets[bucket],
               packed    ? MIRASOL_TOKEN_POOL_FWD_PACKED
               : lengths ? MIRASOL_TOKEN_POOL_FWD_PADDED_LENGTHS
                         : MIRASOL_TOKEN_POOL_FWD_PADDED,
               dim, segments);
  mirasol_token_pool_fwd_args *a = &r->args.pool;
  a->X = (uintptr_t)x;
  a->S = (uintptr_t)logits;
  a->OUT = (uintptr_t)out;
  a->STATS = (uintptr_t)stats;
  a->CU = (uintptr_t)(cu_seqlens ? (const void *)cu_seqlens : x);
  a->LENS = (uintptr_t)(lengths ? (const void *)lengths : x);
  a->stride_xb = packed ? 0 : seqlen * dim, a->stride_xn = dim, a->stride_xd = 1;
  a->stride_sb = packed ? 0 : seqlen * num_tokens, a->stride_sn = num_tokens,
  a->stride_sj = 1;
  a->stride_ob = num_tokens * dim, a->stride_oj = dim, a->stride_od = 1;
  a->stride_tb = 2 * num_tokens, a->stride_tk = num_tokens, a->stride_tj = 1;
  a->N = seqlen;
  a->D = dim;
  a->M = num_tokens;
  return MIRASOL_SUCCESS;
}

/* ------------------------------------------------------------------------ planning */

static const char *kernel_name(mirasol_kernel_id kernel) {
  return kernel == MIRASOL_KERNEL_ATTN_FWD ? "attention" : "token pooling";
}

/* sm_8x cubins run on any 8.y >= x; sm_90a and sm_100a cubins (wgmma, tcgen05) only on
   their own arch. */
static int runs_on(int compiled, int device) {
  if (compiled == device) return 1;
  return compiled / 10 == 8 && device / 10 == 8 && compiled < device;
}

static const mirasol_variant *find_variant(const mirasol_request *r, int arch) {
  const mirasol_variant *best = NULL;
  for (int i = 0; i < mirasol_num_variants; i++) {
    const mirasol_variant *v = &mirasol_variants[i];
    if (v->kernel == r->kernel && v->info.dtype == r->dtype && v->info.size == r->size &&
        v->layout == r->layout && runs_on(v->info.arch, arch) &&
        (!best || v->info.arch > best->info.arch))
      best = v;
  }
  return best;
}

static mirasol_status not_compiled(const mirasol_request *r, int arch) {
  char archs[128] = "", sizes[128] = "";
  for (int i = 0; i < mirasol_num_variants; i++) {
    const mirasol_variant *v = &mirasol_variants[i];
    if (v->kernel != r->kernel) continue;
    char item[16];
    snprintf(item, sizeof item, " sm_%d", v->info.arch);
    if (!strstr(archs, item) && strlen(archs) + strlen(item) < sizeof archs)
      strcat(archs, item);
    snprintf(item, sizeof item, " %d", v->info.size);
    if (!strstr(sizes, item) && strlen(sizes) + strlen(item) < sizeof sizes)
      strcat(sizes, item);
  }
  return mirasol_fail(MIRASOL_ERROR_NOT_COMPILED,
                      "no %s kernel for sm_%d, %s, %s %d in this build (archs:%s; %s:%s); "
                      "rebuild with it in MIRASOL_CUDA_ARCHITECTURES / MIRASOL_AOT_DTYPES / "
                      "MIRASOL_AOT_HEAD_DIMS",
                      kernel_name(r->kernel), arch, r->dtype == MIRASOL_FP16 ? "fp16" : "bf16",
                      r->kernel == MIRASOL_KERNEL_ATTN_FWD ? "head_dim" : "token bucket",
                      r->size, archs,
                      r->kernel == MIRASOL_KERNEL_ATTN_FWD ? "head dims" : "buckets", sizes);
}

/* The cubin's compiled-in assumptions hold for these arguments (they do for every
   request the checks above accept; this guards the two sides of the contract). */
static mirasol_status check_contract(const mirasol_variant *v, const void *args) {
  for (int i = 0; i < v->num_args; i++) {
    const mirasol_arg *a = &v->args[i];
    const char *field = (const char *)args + a->offset;
    int64_t value = a->type == MIRASOL_ARG_PTR   ? (int64_t) * (const uint64_t *)field
                    : a->type == MIRASOL_ARG_I32 ? *(const int32_t *)field
                                                 : 0;
    if (a->rule == MIRASOL_RULE_EQUALS && value != a->value)
      return mirasol_fail(MIRASOL_ERROR_INVALID_ARGUMENT,
                          "%s: %s = %lld, but the kernel was compiled for %lld", v->info.name,
                          a->name, (long long)value, (long long)a->value);
    if (a->rule == MIRASOL_RULE_DIV16 && value % 16 != 0)
      return mirasol_fail(MIRASOL_ERROR_INVALID_ARGUMENT,
                          "%s: %s = %lld, but the kernel was compiled for multiples of 16",
                          v->info.name, a->name, (long long)value);
  }
  return MIRASOL_SUCCESS;
}

mirasol_status mirasol_plan_for(const mirasol_request *r, int arch, mirasol_plan *plan) {
  const mirasol_variant *v = find_variant(r, arch);
  if (!v) return not_compiled(r, arch);
  /* One flat axis, as the Python launchers lay it out (kernels/_program.py): the row blocks
     of each segment (and head) consecutive, decoded in the kernel. */
  int64_t blocks = ((int64_t)r->rows + v->info.block_m - 1) / v->info.block_m;
  CHECK(r->programs <= MAX_GRID_X && blocks * r->programs <= MAX_GRID_X,
        "%s: %lld row blocks x %lld programs (segments x heads) exceed CUDA's grid limit of "
        "%d; split the batch", kernel_name(r->kernel), (long long)blocks,
        (long long)r->programs, MAX_GRID_X);
  TRY(check_contract(v, &r->args));
  plan->variant = v;
  plan->grid[0] = (unsigned)(blocks * r->programs);
  plan->grid[1] = 1;
  plan->grid[2] = 1;
  return MIRASOL_SUCCESS;
}

/* ------------------------------------------------------------------------ launching */

static const uint64_t no_scratch = 0;

int mirasol_kernel_params(const mirasol_variant *v, const mirasol_request *r,
                          void *params[MIRASOL_MAX_PARAMS], int sizes[MIRASOL_MAX_PARAMS]) {
  int n = 0;
  for (int i = 0; i < v->num_args && n < MIRASOL_MAX_PARAMS - 2; i++) {
    const mirasol_arg *a = &v->args[i];
    if (a->rule == MIRASOL_RULE_EQUALS) continue;
    params[n] = (void *)((const char *)&r->args + a->offset);
    sizes[n++] = a->type == MIRASOL_ARG_PTR ? 8 : 4;
  }
  for (int i = 0; i < 2; i++) params[n] = (void *)&no_scratch, sizes[n++] = 8;
  return n;
}

/* Each variant's function in each context it was loaded in (modules stay loaded for the
   life of the process, like the CUDA runtime's). */
typedef struct {
  CUcontext context;
  CUfunction function;
} loaded_function;

static loaded_function (*functions)[MAX_CONTEXTS];
static pthread_mutex_t functions_lock = PTHREAD_MUTEX_INITIALIZER;

static mirasol_status load_function(const mirasol_cuda *cu, const mirasol_variant *v,
                                    CUdevice device, CUfunction *out) {
  CUmodule module;
  CUresult res = cu->ModuleLoadData(&module, v->image);
  if (res != CUDA_SUCCESS) return mirasol_cuda_fail(cu, res, v->info.name);
  CUfunction f;
  if ((res = cu->ModuleGetFunction(&f, module, v->symbol)) != CUDA_SUCCESS)
    return mirasol_cuda_fail(cu, res, v->info.name);
  /* Past this a kernel must opt in to its dynamic shared memory (as triton does). */
  if (v->info.shared_bytes > MIRASOL_SHARED_WITHOUT_OPTIN) {
    int optin = 0, fixed = 0;
    cu->DeviceGetAttribute(&optin, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                           device);
    if (v->info.shared_bytes > optin)
      return mirasol_fail(MIRASOL_ERROR_NOT_COMPILED,
                          "%s needs %d bytes of shared memory; this device allows %d",
                          v->info.name, v->info.shared_bytes, optin);
    cu->FuncGetAttribute(&fixed, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, f);
    res = cu->FuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                               optin - fixed);
    if (res != CUDA_SUCCESS) return mirasol_cuda_fail(cu, res, v->info.name);
  }
  *out = f;
  return MIRASOL_SUCCESS;
}

static mirasol_status function_for(const mirasol_cuda *cu, const mirasol_variant *v,
                                   CUcontext context, CUdevice device, CUfunction *out) {
  mirasol_status status = MIRASOL_SUCCESS;
  pthread_mutex_lock(&functions_lock);
  if (!functions) functions = calloc((size_t)mirasol_num_variants, sizeof *functions);
  if (!functions) {
    pthread_mutex_unlock(&functions_lock);
    return mirasol_fail(MIRASOL_ERROR_CUDA, "out of host memory");
  }
  loaded_function *slots = functions[v - mirasol_variants];
  int i = 0;
  while (i < MAX_CONTEXTS && slots[i].context && slots[i].context != context) i++;
  if (i == MAX_CONTEXTS) {
    status = mirasol_fail(MIRASOL_ERROR_CUDA, "%s is loaded in %d contexts already",
                          v->info.name, MAX_CONTEXTS);
  } else if (!slots[i].context) {
    status = load_function(cu, v, device, &slots[i].function);
    if (status == MIRASOL_SUCCESS) slots[i].context = context;
  }
  if (status == MIRASOL_SUCCESS) *out = slots[i].function;
  pthread_mutex_unlock(&functions_lock);
  return status;
}

static mirasol_status launch(const mirasol_request *r, struct CUstream_st *stream) {
  const mirasol_cuda *cu = mirasol_cuda_driver();
  if (!cu) return MIRASOL_ERROR_NO_DRIVER;
  CUcontext context = NULL;
  CUdevice device;
  if (cu->CtxGetCurrent(&context) != CUDA_SUCCESS || !context)
    return mirasol_fail(MIRASOL_ERROR_NO_DRIVER,
                        "no current CUDA context in this thread (create one, or call any "
                        "CUDA runtime function first)");
  CUresult res = cu->CtxGetDevice(&device);
  if (res != CUDA_SUCCESS) return mirasol_cuda_fail(cu, res, "cuCtxGetDevice");
  int major = 0, minor = 0;
  cu->DeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device);
  cu->DeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device);
  mirasol_plan plan;
  TRY(mirasol_plan_for(r, major * 10 + minor, &plan));
  if (plan.grid[0] == 0 || plan.grid[1] == 0) return MIRASOL_SUCCESS; /* nothing to do */
  CUfunction f;
  TRY(function_for(cu, plan.variant, context, device, &f));

  const mirasol_variant *v = plan.variant;
  void *params[MIRASOL_MAX_PARAMS];
  int sizes[MIRASOL_MAX_PARAMS];
  mirasol_kernel_params(v, r, params, sizes);
  res = cu->LaunchKernel(f, plan.grid[0], plan.grid[1], plan.grid[2],
                         32u * (unsigned)v->info.num_warps, 1, 1,
                         (unsigned)v->info.shared_bytes, (CUstream)stream, params, NULL);
  if (res != CUDA_SUCCESS) return mirasol_cuda_fail(cu, res, v->info.name);
  return MIRASOL_SUCCESS;
}

/* ------------------------------------------------------------------------ the API */

mirasol_status mirasol_chunked_attention_fwd(
    struct CUstream_st *stream, mirasol_dtype dtype, const void *q, const void *k,
    const void *v, void *o, float *lse, const int32_t *lengths, int batch, int heads,
    int kv_heads, int seqlen, int head_dim, int chunk_size, float scale) {
  mirasol_request r;
  TRY(mirasol_request_chunked_attention(&r, dtype, q, k, v, o, lse, lengths, batch, heads,
                                        kv_heads, seqlen, head_dim, chunk_size, scale));
  return launch(&r, stream);
}

mirasol_status mirasol_cross_attention_fwd(
    struct CUstream_st *stream, mirasol_dtype dtype, const void *q, const void *k,
    const void *v, void *o, float *lse, const int32_t *cu_seqlens_q,
    const int32_t *cu_seqlens_k, int segments, int total_q, int total_k, int max_seqlen_q,
    int max_seqlen_k, int heads, int kv_heads, int head_dim, int causal, float scale) {
  mirasol_request r;
  TRY(mirasol_request_cross_attention(&r, dtype, q, k, v, o, lse, cu_seqlens_q,
                                      cu_seqlens_k, segments, total_q, total_k, max_seqlen_q,
                                      max_seqlen_k, heads, kv_heads, head_dim, causal, scale));
  return launch(&r, stream);
}

mirasol_status mirasol_token_pool_fwd(
    struct CUstream_st *stream, mirasol_dtype dtype, const void *x, const void *logits,
    void *out, float *stats, const int32_t *cu_seqlens, const int32_t *lengths, int segments,
    int seqlen, int dim, int num_tokens) {
  mirasol_request r;
  TRY(mirasol_request_token_pool(&r, dtype, x, logits, out, stats, cu_seqlens, lengths,
                                 segments, seqlen, dim, num_tokens));
  return launch(&r, stream);
}
