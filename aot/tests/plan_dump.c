/* Prints the launch the library would make, as JSON, for one problem on a given arch,
   without a GPU: the variant, its config, the grid and every kernel argument by name.
   tests/test_aot_library.py compares it with the Python launcher's on the same problem.

   plan_dump ARCH fp16|bf16 chunked B H H_KV N D CHUNK [lengths]
   plan_dump ARCH fp16|bf16 cross SEGMENTS TOTAL_Q TOTAL_K MAX_Q MAX_K H H_KV D CAUSAL
   plan_dump ARCH fp16|bf16 pool SEGMENTS SEQLEN DIM TOKENS padded|lengths|packed

   Also the byte sizes of the parameters the launch passes, to compare with the cubin's.

   Tensors are given fake, distinct addresses (printed first) so that the test can tell
   which tensor each pointer argument is. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "variant.h"

enum { Q = 1, K, V, O, LSE, CU_Q, CU_K, LENGTHS, X, LOGITS, OUT, STATS, CU };
static const char *names[] = {"", "q", "k", "v", "o", "lse", "cu_seqlens_q", "cu_seqlens_k",
                              "lengths", "x", "logits", "out", "stats", "cu_seqlens"};
#define ADDRESS(t) ((void *)(uintptr_t)((uint64_t)(t) << 32))

int main(int argc, char **argv) {
  if (argc < 4) return 2;
  int arch = atoi(argv[1]);
  mirasol_dtype dtype = strcmp(argv[2], "fp16") == 0 ? MIRASOL_FP16 : MIRASOL_BF16;
  const char *op = argv[3];
  int *n = calloc((size_t)argc, sizeof *n);
  for (int i = 4; i < argc; i++) n[i - 4] = atoi(argv[i]);
  mirasol_request r;
  mirasol_status s;
  if (strcmp(op, "chunked") == 0)
    s = mirasol_request_chunked_attention(
        &r, dtype, ADDRESS(Q), ADDRESS(K), ADDRESS(V), ADDRESS(O), ADDRESS(LSE),
        argc > 10 ? ADDRESS(LENGTHS) : NULL, n[0], n[1], n[2], n[3], n[4], n[5],
        1.0f / (float)n[4]);
  else if (strcmp(op, "cross") == 0)
    s = mirasol_request_cross_attention(&r, dtype, ADDRESS(Q), ADDRESS(K), ADDRESS(V),
                                        ADDRESS(O), ADDRESS(LSE), ADDRESS(CU_Q), ADDRESS(CU_K),
                                        n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7], n[8],
                                        1.0f / (float)n[7]);
  else
    s = mirasol_request_token_pool(
        &r, dtype, ADDRESS(X), ADDRESS(LOGITS), ADDRESS(OUT), ADDRESS(STATS),
        strcmp(argv[8], "packed") == 0 ? ADDRESS(CU) : NULL,
        strcmp(argv[8], "lengths") == 0 ? ADDRESS(LENGTHS) : NULL, n[0], n[1], n[2], n[3]);
  mirasol_plan plan;
  if (s == MIRASOL_SUCCESS) s = mirasol_plan_for(&r, arch, &plan);
  if (s != MIRASOL_SUCCESS) {
    fprintf(stderr, "%s\n", mirasol_last_error());
    return 1;
  }
  const mirasol_variant *v = plan.variant;
  printf("{\"tensors\": {");
  for (int t = Q; t <= CU; t++)
    printf("%s\"%" PRIu64 "\": \"%s\"", t > Q ? ", " : "", (uint64_t)(uintptr_t)ADDRESS(t),
           names[t]);
  printf("}, \"variant\": \"%s\", \"config\": [%d, %d, %d, %d], \"grid\": [%u, %u, %u], "
         "\"args\": {",
         v->info.name, v->info.block_m, v->info.block_n, v->info.num_warps,
         v->info.num_stages, plan.grid[0], plan.grid[1], plan.grid[2]);
  for (int i = 0; i < v->num_args; i++) {
    const mirasol_arg *a = &v->args[i];
    const char *field = (const char *)&r.args + a->offset;
    printf("%s\"%s\": ", i ? ", " : "", a->name);
    if (a->type == MIRASOL_ARG_PTR) printf("%" PRIu64, *(const uint64_t *)field);
    else if (a->type == MIRASOL_ARG_I32) printf("%d", *(const int32_t *)field);
    else printf("%.9g", (double)*(const float *)field);
  }
  void *params[MIRASOL_MAX_PARAMS];
  int sizes[MIRASOL_MAX_PARAMS], count = mirasol_kernel_params(v, &r, params, sizes);
  printf("}, \"param_sizes\": [");
  for (int i = 0; i < count; i++) printf("%s%d", i ? ", " : "", sizes[i]);
  printf("], \"cubin\": \"%s.cubin\"}\n", v->info.name);
  free(n);
  return 0;
}
