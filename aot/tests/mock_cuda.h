/* A stand-in libcuda.so.1 that records what the library asks of the driver, so the
   launch path (module loading, cubin choice, shared-memory opt-in, grid, block, per-context
   caching, error reporting) is tested where there is no GPU. test_launch reaches its state
   through dlsym("mock_cuda_get_state"). */
#ifndef MIRASOL_MOCK_CUDA_H
#define MIRASOL_MOCK_CUDA_H

typedef struct {
  /* set by the test */
  int compute_capability; /* major * 10 + minor */
  int shared_optin;       /* CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN */
  void *context;          /* what cuCtxGetCurrent returns (NULL: none) */
  int launch_result;      /* what cuLaunchKernel returns */
  /* recorded */
  int module_loads;
  const void *last_image;
  int symbol_found; /* the function name asked for occurs in the image */
  int dynamic_shared_set; /* CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, -1 if never */
  int launches;
  unsigned grid[3], block[3], shared;
  void *stream;
  int has_params;
} mock_cuda_state;

#endif
