/* The library's contract that needs no GPU: the build holds the kernels it was asked
   for, bad arguments are refused with a message naming them (before any driver call),
   and a device arch picks the right cubin or a clear refusal.

   test_api ARCH...   (the archs the build was configured with) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_driver.h"
#include "expect.h"
#include "variant.h"

/* `status` is `expected` and the message mentions `needle`. */
static void expect_error(mirasol_status status, mirasol_status expected, const char *needle,
                         const char *what) {
  EXPECT(status == expected, "%s: status %s, expected %s", what, mirasol_status_string(status),
         mirasol_status_string(expected));
  EXPECT(strstr(mirasol_last_error(), needle) != NULL, "%s: message \"%s\" lacks \"%s\"", what,
         mirasol_last_error(), needle);
}

#define P(n) ((void *)(uintptr_t)(0x100000u * (n))) /* aligned, never dereferenced */

static void test_build_contents(int argc, char **argv) {
  EXPECT(mirasol_num_kernels() > 0, "no kernels in the build");
  EXPECT(mirasol_kernel(-1) == NULL && mirasol_kernel(mirasol_num_kernels()) == NULL,
         "out-of-range kernel index not refused");
  for (int a = 1; a < argc; a++) {
    int arch = atoi(argv[a]), attention = 0, pool = 0;
    for (int i = 0; i < mirasol_num_kernels(); i++) {
      const mirasol_variant *v = &mirasol_variants[i];
      const mirasol_kernel_info *info = mirasol_kernel(i);
      EXPECT(info == &v->info && info->num_warps > 0 && info->block_m > 0 &&
                 v->image_size > 0 && v->num_args > 0,
             "kernel %d is malformed", i);
      if (info->arch != arch) continue;
      attention += v->kernel == MIRASOL_KERNEL_ATTN_FWD;
      pool += v->kernel == MIRASOL_KERNEL_TOKEN_POOL_FWD;
    }
    EXPECT(attention > 0 && pool > 0, "sm_%d: %d attention and %d pooling kernels", arch,
           attention, pool);
  }
}

static void test_refusals(void) {
  const float s = 0.125f;
  expect_error(mirasol_chunked_attention_fwd(NULL, MIRASOL_BF16, NULL, P(2), P(3), P(4), P(5),
                                             NULL, 2, 4, 2, 64, 64, 16, s),
               MIRASOL_ERROR_INVALID_ARGUMENT, "q is NULL", "null q");
  expect_error(mirasol_chunked_attention_fwd(NULL, MIRASOL_BF16, P(1), P(2), P(3), P(4), P(5),
                                             (const int32_t *)((char *)P(6) + 4), 2, 4, 2, 64,
                                             64, 16, s),
               MIRASOL_ERROR_INVALID_ARGUMENT, "lengths", "misaligned lengths");
  expect_error(mirasol_chunked_attention_fwd(NULL, (mirasol_dtype)7, P(1), P(2), P(3), P(4),
                                             P(5), NULL, 2, 4, 2, 64, 64, 16, s),
               MIRASOL_ERROR_INVALID_ARGUMENT, "dtype = 7", "bad dtype");
  expect_error(mirasol_chunked_attention_fwd(NULL, MIRASOL_BF16, P(1), P(2), P(3), P(4), P(5),
                                             NULL, 2, 6, 4, 64, 64, 16, s),
               MIRASOL_ERROR_INVALID_ARGUMENT, "heads = 6 is not a multiple of kv_heads = 4",
               "grouping");
  expect_error(mirasol_chunked_attention_fwd(NULL, MIRASOL_BF16, P(1), P(2), P(3), P(4), P(5),
                                             NULL, 2, 4, 2, 64, 72, 16, s),
               MIRASOL_ERROR_INVALID_ARGUMENT, "head_dim = 72", "head dim");
  expect_error(mirasol_chunked_attention_fwd(NULL, MIRASOL_BF16, P(1), P(2), P(3), P(4), P(5),
                                             NULL, 2, 4, 2, 64, 64, 0, s),
               MIRASOL_ERROR_INVALID_ARGUMENT, "chunk_size = 0", "chunk size");
  expect_error(mirasol_chunked_attention_fwd(NULL, MIRASOL_BF16, P(1), P(2), P(3), P(4), P(5),
                                             NULL, 1 << 12, 64, 8, 1 << 10, 128, 16, s),
               MIRASOL_ERROR_INVALID_ARGUMENT, "2^31", "too many elements");
  /* Sizes whose product would overflow 64 bits are refused, not wrapped. */
  expect_error(mirasol_chunked_attention_fwd(NULL, MIRASOL_BF16, P(1), P(2), P(3), P(4), P(5),
                                             NULL, 2147483647, 2147483647, 1, 2147483647, 256,
                                             16, s),
               MIRASOL_ERROR_INVALID_ARGUMENT, "2^31", "elements past 2^63");
  expect_error(mirasol_cross_attention_fwd(NULL, MIRASOL_FP16, P(1), P(2), P(3), P(4), P(5),
                                           P(6), P(7), 3, 40, 50, 41, 20, 4, 4, 64, 0, s),
               MIRASOL_ERROR_INVALID_ARGUMENT, "max_seqlen_q = 41", "max_seqlen_q");
  expect_error(mirasol_cross_attention_fwd(NULL, MIRASOL_FP16, P(1), P(2), P(3), P(4), P(5),
                                           NULL, P(7), 3, 40, 50, 20, 20, 4, 4, 64, 0, s),
               MIRASOL_ERROR_INVALID_ARGUMENT, "cu_seqlens_q is NULL", "no cu_seqlens_q");
  expect_error(mirasol_token_pool_fwd(NULL, MIRASOL_BF16, P(1), P(2), P(3), P(4), P(5), P(6),
                                      4, 100, 64, 8),
               MIRASOL_ERROR_INVALID_ARGUMENT, "both given", "packed and padded");
  expect_error(mirasol_token_pool_fwd(NULL, MIRASOL_BF16, P(1), P(2), P(3), P(4), NULL, NULL,
                                      4, 100, 40, 8),
               MIRASOL_ERROR_INVALID_ARGUMENT, "dim = 40", "feature dim");
  char too_many[64];
  snprintf(too_many, sizeof too_many, "num_tokens = %d", MIRASOL_MAX_OUTPUT_TOKENS + 1);
  expect_error(mirasol_token_pool_fwd(NULL, MIRASOL_BF16, P(1), P(2), P(3), P(4), NULL, NULL,
                                      4, 100, 64, MIRASOL_MAX_OUTPUT_TOKENS + 1),
               MIRASOL_ERROR_INVALID_ARGUMENT, too_many, "token count");
}

static void test_planning(int archs[], int count) {
  mirasol_request r;
  mirasol_plan plan;
  const mirasol_variant *first = &mirasol_variants[0];
  int d = first->kernel == MIRASOL_KERNEL_ATTN_FWD ? first->info.size : 64;
  EXPECT(mirasol_request_chunked_attention(&r, first->info.dtype, P(1), P(2), P(3), P(4), P(5),
                                           NULL, 2, 8, 2, 1000, d, 256, 0.125f) ==
             MIRASOL_SUCCESS,
         "valid request refused: %s", mirasol_last_error());
  for (int i = 0; i < count; i++) {
    EXPECT(mirasol_plan_for(&r, archs[i], &plan) == MIRASOL_SUCCESS, "sm_%d: %s", archs[i],
           mirasol_last_error());
    EXPECT(plan.variant->info.arch == archs[i], "sm_%d ran sm_%d's kernel", archs[i],
           plan.variant->info.arch);
    /* one flat axis: 16 segment-heads x their row blocks */
    EXPECT(plan.grid[1] == 1 && plan.grid[0] == 16 * (unsigned)((1000 + plan.variant->info
                                                                  .block_m - 1) /
                                                                 plan.variant->info.block_m),
           "sm_%d: grid %u x %u", archs[i], plan.grid[0], plan.grid[1]);
  }
  /* No cubin for an older arch; an sm_8x cubin serves a later 8.y, never sm_9x. */
  expect_error(mirasol_plan_for(&r, 75, &plan), MIRASOL_ERROR_NOT_COMPILED, "sm_75",
               "sm_75");
  int has80 = 0, has86 = 0, has90 = 0;
  for (int i = 0; i < count; i++) {
    has80 |= archs[i] == 80;
    has86 |= archs[i] == 86;
    has90 |= archs[i] == 90;
  }
  if (has80 && !has86) {
    EXPECT(mirasol_plan_for(&r, 86, &plan) == MIRASOL_SUCCESS &&
               plan.variant->info.arch == 80,
           "sm_86 should run the sm_80 cubin");
  }
  if (!has90) expect_error(mirasol_plan_for(&r, 90, &plan), MIRASOL_ERROR_NOT_COMPILED,
                           "sm_90", "sm_90 not built");
  /* A head dim the build lacks. */
  EXPECT(mirasol_request_chunked_attention(&r, first->info.dtype, P(1), P(2), P(3), P(4), P(5),
                                           NULL, 2, 8, 2, 1000, 240, 256, 0.125f) ==
             MIRASOL_SUCCESS,
         "head dim 240 refused early: %s", mirasol_last_error());
  expect_error(mirasol_plan_for(&r, archs[0], &plan), MIRASOL_ERROR_NOT_COMPILED,
               "head_dim 240", "head dim not built");
  /* CUDA's grid limit (2^31 - 1 programs; below the element limit it is reached only where
     segments x heads alone passes it, with an empty sequence). */
  EXPECT(mirasol_request_chunked_attention(&r, first->info.dtype, P(1), P(2), P(3), P(4), P(5),
                                           NULL, 1 << 20, 1 << 12, 1, 0, d, 256, 0.125f) ==
             MIRASOL_SUCCESS,
         "empty batch refused early: %s", mirasol_last_error());
  expect_error(mirasol_plan_for(&r, archs[0], &plan), MIRASOL_ERROR_INVALID_ARGUMENT,
               "4294967296 programs", "programs past 2^31");
  /* More than 65,535 segments (once the y axis's limit) are served. */
  EXPECT(mirasol_request_token_pool(&r, MIRASOL_BF16, P(1), P(2), P(3), P(4), NULL, NULL,
                                    70000, 4, 64, 8) == MIRASOL_SUCCESS,
         "pool request: %s", mirasol_last_error());
  EXPECT(mirasol_plan_for(&r, archs[0], &plan) == MIRASOL_SUCCESS && plan.grid[1] == 1 &&
             plan.grid[0] == 70000u * (unsigned)((64 + plan.variant->info.block_m - 1) /
                                                 plan.variant->info.block_m),
         "70000 segments: %s", mirasol_last_error());
}

/* Without a driver a valid call says so; with one, test_run covers the launch. */
static void test_without_driver(void) {
  if (mirasol_cuda_driver()) return;
  const mirasol_variant *first = &mirasol_variants[0];
  expect_error(mirasol_token_pool_fwd(NULL, first->info.dtype, P(1), P(2), P(3), P(4), NULL,
                                      NULL, 4, 100, 64, 8),
               MIRASOL_ERROR_NO_DRIVER, "libcuda", "no driver");
}

int main(int argc, char **argv) {
  int archs[16], count = 0;
  for (int i = 1; i < argc && count < 16; i++) archs[count++] = atoi(argv[i]);
  if (count == 0) {
    fprintf(stderr, "usage: test_api ARCH...\n");
    return 2;
  }
  test_build_contents(argc, argv);
  test_refusals();
  test_planning(archs, count);
  test_without_driver();
  return expect_summary();
}
