/* A stand-in libcuda.so.1 for building CUDA kernels with TVM on a host without a GPU.
 *
 * libtvm_runtime_cuda.so links against the CUDA driver; without a libcuda.so.1 TVM cannot load its CUDA
 * runtime and stores kernel *source* in exported modules instead of the nvcc fatbin. Every entry point
 * here reports "no device", so nothing can run by mistake. Built on demand by cuda_host.py into the cache
 * directory; never shipped in an artifact or runtime bundle.
 */
#define CUDA_ERROR_NO_DEVICE 100
typedef int CUresult;

#define STUB(name) CUresult name() { return CUDA_ERROR_NO_DEVICE; }
STUB(cuInit)
STUB(cuDriverGetVersion)
STUB(cuDeviceGet)
STUB(cuDeviceGetCount)
STUB(cuDeviceGetName)
STUB(cuDeviceGetAttribute)
STUB(cuCtxGetCurrent)
STUB(cuFuncSetAttribute)
STUB(cuFuncGetAttribute)
STUB(cuLaunchKernel)
STUB(cuLaunchKernelEx)
STUB(cuModuleGetFunction)
STUB(cuModuleGetGlobal)
STUB(cuModuleLoadData)
STUB(cuModuleUnload)
STUB(cuTensorMapEncodeTiled)
STUB(cuGetProcAddress)

CUresult cuGetErrorName(int error, const char **out) { *out = "CUDA_ERROR_NO_DEVICE"; return 0; }
CUresult cuGetErrorString(int error, const char **out) { *out = "no CUDA device (build-host stub)"; return 0; }
