/*
 * mirasol: the forward kernels of chunked causal attention, cross-attention and token
 * pooling, compiled ahead of time for a list of CUDA archs, launched from C or C++ on a
 * CUDA stream without Python.
 *
 * Built by the project's CMakeLists.txt (see docs/c-library.md): libmirasol_kernels.so and this
 * header. The library loads the CUDA driver (libcuda.so.1) at the first launch, so it
 * links and loads on machines without one; it needs no CUDA toolkit at run time.
 *
 * Conventions:
 * - Tensors are device pointers to contiguous row-major arrays, 16-byte aligned (every
 *   cudaMalloc'd pointer is), in the dtype given; lse/stats are float32, lengths and
 *   cu_seqlens int32. Outputs are overwritten entirely (padding rows included).
 * - Every function checks its arguments before it touches the driver and returns a
 *   status; mirasol_last_error() then names the argument and what was expected.
 * - The kernel for the current context's device is picked by compute capability (an
 *   sm_8x cubin also serves a newer sm_8y; sm_90 and sm_100 cubins use arch-specific
 *   instructions and serve only their own arch). A launch is asynchronous on `stream`
 *   (NULL: the legacy default stream) like any kernel launch.
 * - Sizes are int; every tensor must have fewer than 2^31 elements.
 * - Numerics match the Python ops (float32 accumulation, log-sum-exp in natural log).
 */
#ifndef MIRASOL_H
#define MIRASOL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define MIRASOL_API
#else
#define MIRASOL_API __attribute__((visibility("default")))
#endif

/* CUstream and cudaStream_t are both pointers to this type. */
struct CUstream_st;

typedef enum {
  MIRASOL_FP16 = 0,
  MIRASOL_BF16 = 1,
} mirasol_dtype;

typedef enum {
  MIRASOL_SUCCESS = 0,
  MIRASOL_ERROR_INVALID_ARGUMENT = 1, /* a size, pointer or option the op cannot take */
  MIRASOL_ERROR_NOT_COMPILED = 2,     /* no kernel in this build for the device's arch,
                                         the dtype or the head dim */
  MIRASOL_ERROR_NO_DRIVER = 3,        /* libcuda.so.1 missing, or no current CUDA context */
  MIRASOL_ERROR_CUDA = 4,             /* a CUDA driver call failed (message has its error) */
} mirasol_status;

/* What went wrong in this thread's last failed call ("" if none): names the argument
   and what was expected. */
MIRASOL_API const char *mirasol_last_error(void);
MIRASOL_API const char *mirasol_status_string(mirasol_status status);

/*
 * Chunked causal attention (Mirasol3B's A/V model): token i of a sample attends to token
 * j iff j / chunk_size <= i / chunk_size and j < lengths[b] (i.e. to every token of its own
 * chunk and of earlier chunks).
 *
 *   q, o       (batch, heads, seqlen, head_dim)
 *   k, v       (batch, kv_heads, seqlen, head_dim); heads % kv_heads == 0 (grouped-query)
 *   lse        (batch, heads, seqlen) float32 out: log-sum-exp of each row's scores
 *              (-inf, and o = 0, for rows at or past the sample's length)
 *   lengths    (batch,) int32 valid tokens per sample in [0, seqlen], or NULL for seqlen
 *   scale      the softmax scale, usually 1 / sqrt(head_dim)
 */
MIRASOL_API mirasol_status mirasol_chunked_attention_fwd(
    struct CUstream_st *stream, mirasol_dtype dtype, const void *q, const void *k,
    const void *v, void *o, float *lse, const int32_t *lengths, int batch, int heads,
    int kv_heads, int seqlen, int head_dim, int chunk_size, float scale);

/*
 * Cross-attention on packed segments (flash-attn's varlen convention): query segment b
 * (rows cu_seqlens_q[b] .. cu_seqlens_q[b+1]) attends to key segment b. causal != 0:
 * bottom-right aligned, query i of a segment sees keys j <= i + k_len - q_len.
 *
 *   q, o         (total_q, heads, head_dim)
 *   k, v         (total_k, kv_heads, head_dim)
 *   lse          (heads, total_q) float32 out (-inf, and o = 0, for a row that sees no key)
 *   cu_seqlens_* (segments + 1,) int32, from 0 to total_*, non-decreasing
 *   max_seqlen_* the longest segment (an upper bound is fine; it sizes the grid)
 */
MIRASOL_API mirasol_status mirasol_cross_attention_fwd(
    struct CUstream_st *stream, mirasol_dtype dtype, const void *q, const void *k,
    const void *v, void *o, float *lse, const int32_t *cu_seqlens_q,
    const int32_t *cu_seqlens_k, int segments, int total_q, int total_k, int max_seqlen_q,
    int max_seqlen_k, int heads, int kv_heads, int head_dim, int causal, float scale);

/*
 * Token pooling (TokenLearner, Mirasol3B's Combiner): for each segment,
 * out[j] = sum_n softmax_n(logits[n, j]) * x[n].
 *
 * Padded (cu_seqlens == NULL): x (segments, seqlen, dim), logits (segments, seqlen,
 *   num_tokens), lengths (segments,) int32 valid tokens, or NULL for seqlen.
 * Packed (cu_seqlens != NULL, lengths == NULL): x (seqlen, dim) and logits (seqlen,
 *   num_tokens) hold all segments' tokens; seqlen is the total.
 *   out    (segments, num_tokens, dim) out (0 for an empty segment)
 *   stats  (segments, 2, num_tokens) float32 out: each column's max and log-sum
 *   dim % 16 == 0; 1 <= num_tokens <= 64
 */
MIRASOL_API mirasol_status mirasol_token_pool_fwd(
    struct CUstream_st *stream, mirasol_dtype dtype, const void *x, const void *logits,
    void *out, float *stats, const int32_t *cu_seqlens, const int32_t *lengths, int segments,
    int seqlen, int dim, int num_tokens);

/* What this build holds: one entry per compiled kernel variant. */
typedef struct {
  const char *name;     /* e.g. "attn_fwd_sm90_bf16_64_chunked_lengths" */
  int arch;             /* compute capability * 10 + minor: 80, 86, 89, 90, 100 */
  mirasol_dtype dtype;
  int size;             /* head dim (attention) or output-token bucket (pooling) */
  int block_m, block_n, num_warps, num_stages;
  int shared_bytes;
} mirasol_kernel_info;

MIRASOL_API int mirasol_num_kernels(void);
/* The i-th variant, 0 <= i < mirasol_num_kernels(); NULL out of range. */
MIRASOL_API const mirasol_kernel_info *mirasol_kernel(int i);

#ifdef __cplusplus
}
#endif

#endif /* MIRASOL_H */
