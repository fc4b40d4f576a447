#include "cuda_driver.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#include "variant.h"

static mirasol_cuda driver;
static const mirasol_cuda *loaded;
static char load_error[512];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void load(void) {
  void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    snprintf(load_error, sizeof load_error,
             "the CUDA driver (libcuda.so.1) could not be loaded: %s", dlerror());
    return;
  }
  /* The _v2 entry points are the ones with 64-bit sizes and pointers (cuda.h maps the
     plain names to them by macro; dlsym needs the real symbol). */
  struct {
    void **slot;
    const char *symbol;
  } table[] = {
      {(void **)&driver.Init, "cuInit"},
      {(void **)&driver.GetErrorString, "cuGetErrorString"},
      {(void **)&driver.DeviceGet, "cuDeviceGet"},
      {(void **)&driver.DeviceGetCount, "cuDeviceGetCount"},
      {(void **)&driver.DeviceGetAttribute, "cuDeviceGetAttribute"},
      {(void **)&driver.DevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain"},
      {(void **)&driver.CtxGetCurrent, "cuCtxGetCurrent"},
      {(void **)&driver.CtxSetCurrent, "cuCtxSetCurrent"},
      {(void **)&driver.CtxGetDevice, "cuCtxGetDevice"},
      {(void **)&driver.CtxSynchronize, "cuCtxSynchronize"},
      {(void **)&driver.ModuleLoadData, "cuModuleLoadData"},
      {(void **)&driver.ModuleGetFunction, "cuModuleGetFunction"},
      {(void **)&driver.FuncGetAttribute, "cuFuncGetAttribute"},
      {(void **)&driver.FuncSetAttribute, "cuFuncSetAttribute"},
      {(void **)&driver.LaunchKernel, "cuLaunchKernel"},
      {(void **)&driver.MemAlloc, "cuMemAlloc_v2"},
      {(void **)&driver.MemFree, "cuMemFree_v2"},
      {(void **)&driver.MemcpyHtoD, "cuMemcpyHtoD_v2"},
      {(void **)&driver.MemcpyDtoH, "cuMemcpyDtoH_v2"},
  };
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
    *table[i].slot = dlsym(lib, table[i].symbol);
    if (!*table[i].slot) {
      snprintf(load_error, sizeof load_error, "libcuda.so.1 has no %s (driver too old?)",
               table[i].symbol);
      return;
    }
  }
  CUresult result = driver.Init(0);
  if (result != CUDA_SUCCESS) {
    const char *message = "unknown error";
    driver.GetErrorString(result, &message);
    snprintf(load_error, sizeof load_error, "cuInit failed: %s", message);
    return;
  }
  loaded = &driver;
}

const mirasol_cuda *mirasol_cuda_driver(void) {
  pthread_once(&once, load);
  if (!loaded) mirasol_fail(MIRASOL_ERROR_NO_DRIVER, "%s", load_error);
  return loaded;
}

mirasol_status mirasol_cuda_fail(const mirasol_cuda *cu, CUresult result, const char *what) {
  const char *message = "unknown error";
  cu->GetErrorString(result, &message);
  return mirasol_fail(MIRASOL_ERROR_CUDA, "%s: %s", what, message);
}
