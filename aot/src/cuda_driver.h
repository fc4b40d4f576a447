/* The CUDA driver API, loaded from libcuda.so.1 at first use (so the library links and
   loads on machines without a driver). Internal to the library and its tests. */
#ifndef MIRASOL_CUDA_DRIVER_H
#define MIRASOL_CUDA_DRIVER_H

#include <cuda.h>

#include "mirasol.h"

typedef struct {
  CUresult (*Init)(unsigned int);
  CUresult (*GetErrorString)(CUresult, const char **);
  CUresult (*DeviceGet)(CUdevice *, int);
  CUresult (*DeviceGetCount)(int *);
  CUresult (*DeviceGetAttribute)(int *, CUdevice_attribute, CUdevice);
  CUresult (*DevicePrimaryCtxRetain)(CUcontext *, CUdevice);
  CUresult (*CtxGetCurrent)(CUcontext *);
  CUresult (*CtxSetCurrent)(CUcontext);
  CUresult (*CtxGetDevice)(CUdevice *);
  CUresult (*CtxSynchronize)(void);
  CUresult (*ModuleLoadData)(CUmodule *, const void *);
  CUresult (*ModuleGetFunction)(CUfunction *, CUmodule, const char *);
  CUresult (*FuncGetAttribute)(int *, CUfunction_attribute, CUfunction);
  CUresult (*FuncSetAttribute)(CUfunction, CUfunction_attribute, int);
  CUresult (*LaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                           unsigned, unsigned, CUstream, void **, void **);
  CUresult (*MemAlloc)(CUdeviceptr *, size_t);
  CUresult (*MemFree)(CUdeviceptr);
  CUresult (*MemcpyHtoD)(CUdeviceptr, const void *, size_t);
  CUresult (*MemcpyDtoH)(void *, CUdeviceptr, size_t);
} mirasol_cuda;

/* The driver, initialized (cuInit), or NULL with mirasol_last_error() saying why. */
const mirasol_cuda *mirasol_cuda_driver(void);

/* Records "<what>: <the driver's message>" for mirasol_last_error(); returns
   MIRASOL_ERROR_CUDA. */
mirasol_status mirasol_cuda_fail(const mirasol_cuda *cu, CUresult result, const char *what);

#endif
