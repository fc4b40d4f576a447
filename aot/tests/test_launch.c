/* The launch path against a stand-in driver (mock_cuda.c, found first through
   LD_LIBRARY_PATH): each op loads the cubin its device's arch selects, asks for the
   kernel's own symbol, opts in to large shared memory, launches the planned grid with
   32 x num_warps threads on the caller's stream, loads a module once per context, and
   reports driver failures and a missing context. No GPU needed. */
#include <cuda.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mock_cuda.h"
#include "expect.h"
#include "variant.h"

#define P(n) ((void *)(uintptr_t)(0x100000u * (n))) /* never dereferenced by the mock */

static mock_cuda_state *mock;
static char context_a, context_b, context_c;
static struct CUstream_st *const stream = (struct CUstream_st *)P(99);

/* Launches chunked attention (B=2, H=8, N=1000) with the first compiled dtype and head
   dim; returns the status and the plan the library should have used for `arch`. */
static mirasol_status chunked(int arch, mirasol_plan *plan) {
  const mirasol_variant *first = &mirasol_variants[0];
  mirasol_request r;
  mirasol_request_chunked_attention(&r, first->info.dtype, P(1), P(2), P(3), P(4), P(5), NULL,
                                    2, 8, 2, 1000, first->info.size, 256, 0.125f);
  mirasol_plan_for(&r, arch, plan);
  return mirasol_chunked_attention_fwd(stream, first->info.dtype, P(1), P(2), P(3), P(4),
                                       P(5), NULL, 2, 8, 2, 1000, first->info.size, 256,
                                       0.125f);
}

static void expect_launch_of(const mirasol_plan *plan, const char *what) {
  const mirasol_kernel_info *info = &plan->variant->info;
  EXPECT(mock->last_image == plan->variant->image, "%s: loaded another cubin than %s", what,
         info->name);
  EXPECT(mock->symbol_found, "%s: symbol %s not in the cubin", what, plan->variant->symbol);
  EXPECT(!memcmp(mock->grid, plan->grid, sizeof mock->grid), "%s: grid %u x %u x %u", what,
         mock->grid[0], mock->grid[1], mock->grid[2]);
  EXPECT(mock->block[0] == 32u * (unsigned)info->num_warps && mock->block[1] == 1 &&
             mock->block[2] == 1,
         "%s: block %u", what, mock->block[0]);
  EXPECT(mock->shared == (unsigned)info->shared_bytes, "%s: shared %u, expected %d", what,
         mock->shared, info->shared_bytes);
  EXPECT(mock->stream == stream && mock->has_params, "%s: stream or parameters lost", what);
}

int main(int argc, char **argv) {
  void *driver = dlopen("libcuda.so.1", RTLD_NOW);
  mock_cuda_state *(*get)(void) = driver ? (mock_cuda_state * (*)(void)) dlsym(driver, "mock_cuda_get_state") : NULL;
  if (!get) {
    printf("FAIL: libcuda.so.1 is not the mock (set LD_LIBRARY_PATH to its folder)\n");
    return 1;
  }
  mock = get();
  int archs[16], count = 0;
  for (int i = 1; i < argc && count < 16; i++) archs[count++] = atoi(argv[i]);

  mirasol_plan plan;
  mock->context = &context_a;
  for (int i = 0; i < count; i++) {
    mock->compute_capability = archs[i];
    mock->shared_optin = archs[i] == 86 || archs[i] == 89 ? 101376 : 232448;
    int loads = mock->module_loads;
    mock->dynamic_shared_set = -1;
    EXPECT(chunked(archs[i], &plan) == MIRASOL_SUCCESS, "sm_%d: %s", archs[i],
           mirasol_last_error());
    expect_launch_of(&plan, "chunked attention");
    EXPECT(mock->module_loads == loads + 1, "sm_%d: %d module loads", archs[i],
           mock->module_loads - loads);
    EXPECT(plan.variant->info.shared_bytes > MIRASOL_SHARED_WITHOUT_OPTIN
               ? mock->dynamic_shared_set == mock->shared_optin
               : mock->dynamic_shared_set == -1,
           "sm_%d: %d bytes of shared memory, opt-in set to %d", archs[i],
           plan.variant->info.shared_bytes, mock->dynamic_shared_set);
    /* Loaded once per context. */
    EXPECT(chunked(archs[i], &plan) == MIRASOL_SUCCESS && mock->module_loads == loads + 1,
           "sm_%d: reloaded in the same context", archs[i]);
    mock->context = &context_b;
    EXPECT(chunked(archs[i], &plan) == MIRASOL_SUCCESS && mock->module_loads == loads + 2,
           "sm_%d: not loaded in a second context", archs[i]);
    mock->context = &context_a;
  }
  /* An sm_80 cubin serves an sm_86 device when the build has no sm_86 one (in a fresh
     context, so that it is loaded and seen). */
  mock->compute_capability = 86;
  mock->context = &context_c;
  mirasol_status status = chunked(86, &plan);
  EXPECT(status == (plan.variant ? MIRASOL_SUCCESS : MIRASOL_ERROR_NOT_COMPILED), "sm_86: %s",
         mirasol_last_error());
  if (status == MIRASOL_SUCCESS) expect_launch_of(&plan, "sm_86");
  mock->context = &context_a;

  /* The other ops, on the first arch. */
  mock->compute_capability = archs[0];
  const mirasol_variant *first = &mirasol_variants[0];
  mirasol_request r;
  mirasol_request_token_pool(&r, first->info.dtype, P(1), P(2), P(3), P(4), P(5), NULL, 7, 100,
                             64, 24);
  mirasol_plan_for(&r, archs[0], &plan);
  EXPECT(mirasol_token_pool_fwd(stream, first->info.dtype, P(1), P(2), P(3), P(4), P(5), NULL, 7,
                                100, 64, 24) == MIRASOL_SUCCESS,
         "token pool: %s", mirasol_last_error());
  expect_launch_of(&plan, "token pool");
  mirasol_request_cross_attention(&r, first->info.dtype, P(1), P(2), P(3), P(4), P(5), P(6),
                                  P(7), 3, 70, 90, 40, 50, 4, 2, first->info.size, 1, 0.125f);
  mirasol_plan_for(&r, archs[0], &plan);
  EXPECT(mirasol_cross_attention_fwd(stream, first->info.dtype, P(1), P(2), P(3), P(4), P(5),
                                     P(6), P(7), 3, 70, 90, 40, 50, 4, 2, first->info.size, 1,
                                     0.125f) == MIRASOL_SUCCESS,
         "cross-attention: %s", mirasol_last_error());
  expect_launch_of(&plan, "cross-attention");

  /* Nothing to do launches nothing. */
  int launches = mock->launches;
  EXPECT(mirasol_token_pool_fwd(stream, first->info.dtype, P(1), P(2), P(3), P(4), NULL, NULL,
                                0, 100, 64, 24) == MIRASOL_SUCCESS &&
             mock->launches == launches,
         "an empty batch launched a kernel");

  /* Failures are reported, not swallowed. */
  mock->launch_result = CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
  status = chunked(archs[0], &plan);
  EXPECT(status == MIRASOL_ERROR_CUDA && strstr(mirasol_last_error(), "mock error") &&
             strstr(mirasol_last_error(), plan.variant->info.name),
         "launch failure: %s, \"%s\"", mirasol_status_string(status), mirasol_last_error());
  mock->launch_result = CUDA_SUCCESS;
  mock->context = NULL;
  status = chunked(archs[0], &plan);
  EXPECT(status == MIRASOL_ERROR_NO_DRIVER && strstr(mirasol_last_error(), "context"),
         "no context: %s, \"%s\"", mirasol_status_string(status), mirasol_last_error());
  mock->context = &context_a;
  mock->compute_capability = 75;
  status = chunked(75, &plan);
  EXPECT(status == MIRASOL_ERROR_NOT_COMPILED && strstr(mirasol_last_error(), "sm_75"),
         "sm_75: %s", mirasol_last_error());

  return expect_summary();
}
