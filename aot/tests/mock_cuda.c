#include "mock_cuda.h"

#include <cuda.h>
#include <stdint.h>
#include <string.h>

__attribute__((visibility("default"))) mock_cuda_state mock_cuda_state_ = {
    .compute_capability = 90, .shared_optin = 232448, .dynamic_shared_set = -1};

__attribute__((visibility("default"))) mock_cuda_state *mock_cuda_get_state(void) {
  return &mock_cuda_state_;
}

#define API __attribute__((visibility("default")))
static mock_cuda_state *const s = &mock_cuda_state_;

API CUresult cuInit(unsigned int flags) { return flags == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE; }
API CUresult cuGetErrorString(CUresult r, const char **message) {
  *message = r == CUDA_SUCCESS ? "no error" : "mock error";
  return CUDA_SUCCESS;
}
API CUresult cuDeviceGet(CUdevice *d, int ordinal) { *d = ordinal; return CUDA_SUCCESS; }
API CUresult cuDeviceGetCount(int *count) { *count = 1; return CUDA_SUCCESS; }
API CUresult cuDeviceGetAttribute(int *value, CUdevice_attribute attribute, CUdevice d) {
  (void)d;
  switch (attribute) {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *value = s->compute_capability / 10; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *value = s->compute_capability % 10; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *value = s->shared_optin; break;
    default: return CUDA_ERROR_INVALID_VALUE;
  }
  return CUDA_SUCCESS;
}
API CUresult cuDevicePrimaryCtxRetain(CUcontext *c, CUdevice d) {
  (void)d;
  *c = (CUcontext)s->context;
  return CUDA_SUCCESS;
}
API CUresult cuCtxGetCurrent(CUcontext *c) { *c = (CUcontext)s->context; return CUDA_SUCCESS; }
API CUresult cuCtxSetCurrent(CUcontext c) { s->context = c; return CUDA_SUCCESS; }
API CUresult cuCtxGetDevice(CUdevice *d) { *d = 0; return CUDA_SUCCESS; }
API CUresult cuCtxSynchronize(void) { return CUDA_SUCCESS; }

API CUresult cuModuleLoadData(CUmodule *m, const void *image) {
  if (memcmp(image, "\177ELF", 4) != 0) return CUDA_ERROR_INVALID_IMAGE;
  s->module_loads++;
  s->last_image = image;
  *m = (CUmodule)image;
  return CUDA_SUCCESS;
}

/* The image's extent from its ELF64 header: the section headers come last. */
static size_t elf_size(const unsigned char *image) {
  uint64_t shoff;
  uint16_t shentsize, shnum;
  memcpy(&shoff, image + 0x28, 8);
  memcpy(&shentsize, image + 0x3a, 2);
  memcpy(&shnum, image + 0x3c, 2);
  return (size_t)(shoff + (uint64_t)shentsize * shnum);
}

API CUresult cuModuleGetFunction(CUfunction *f, CUmodule m, const char *name) {
  const unsigned char *image = (const unsigned char *)m;
  size_t n = elf_size(image), len = strlen(name);
  s->symbol_found = 0;
  for (size_t i = 0; i + len < n && !s->symbol_found; i++)
    s->symbol_found = memcmp(image + i, name, len + 1) == 0;
  *f = (CUfunction)m;
  return s->symbol_found ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}
API CUresult cuFuncGetAttribute(int *value, CUfunction_attribute a, CUfunction f) {
  (void)f;
  *value = 0; /* triton kernels use dynamic shared memory only */
  return a == CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
API CUresult cuFuncSetAttribute(CUfunction f, CUfunction_attribute a, int value) {
  (void)f;
  if (a != CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) return CUDA_ERROR_INVALID_VALUE;
  s->dynamic_shared_set = value;
  return CUDA_SUCCESS;
}
API CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                            unsigned by, unsigned bz, unsigned shared, CUstream stream,
                            void **params, void **extra) {
  (void)f;
  s->launches++;
  s->grid[0] = gx, s->grid[1] = gy, s->grid[2] = gz;
  s->block[0] = bx, s->block[1] = by, s->block[2] = bz;
  s->shared = shared;
  s->stream = stream;
  s->has_params = params != NULL && extra == NULL;
  return (CUresult)s->launch_result;
}
API CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) { (void)p, (void)n; return CUDA_ERROR_NOT_SUPPORTED; }
API CUresult cuMemFree_v2(CUdeviceptr p) { (void)p; return CUDA_ERROR_NOT_SUPPORTED; }
API CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void *h, size_t n) { (void)d, (void)h, (void)n; return CUDA_ERROR_NOT_SUPPORTED; }
API CUresult cuMemcpyDtoH_v2(void *h, CUdeviceptr d, size_t n) { (void)h, (void)d, (void)n; return CUDA_ERROR_NOT_SUPPORTED; }
