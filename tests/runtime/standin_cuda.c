/* A stand-in NVIDIA driver (libcuda.so.1) for the simulated-GPU tests: it answers the driver calls vdt and
   onnxruntime-gpu make while probing (cuInit, device count, name, compute capability, driver version) as a machine
   with VDT_STANDIN_GPUS GPUs (default 1) named "Stand-in GPU", compute capability 9.0. It runs nothing: the CUDA and
   TensorRT providers of onnxruntime-gpu still fail to load (no cuBLAS / cuDNN / TensorRT here), as on a machine
   with a driver and a broken CUDA install. Built by tests/runtime/simulated_gpu.py with the system C compiler. */
#include <stdlib.h>
#include <string.h>

static int gpus(void) {
    const char *s = getenv("VDT_STANDIN_GPUS");
    return s ? atoi(s) : 1;
}

int cuInit(unsigned int flags) { (void)flags; return 0; }
int cuDriverGetVersion(int *version) { *version = 13000; return 0; }
int cuDeviceGetCount(int *count) { *count = gpus(); return 0; }

int cuDeviceGet(int *device, int ordinal) {
    if (ordinal < 0 || ordinal >= gpus()) return 101; /* CUDA_ERROR_INVALID_DEVICE */
    *device = ordinal;
    return 0;
}

int cuDeviceGetName(char *name, int len, int device) {
    (void)device;
    strncpy(name, "Stand-in GPU", (size_t)len);
    name[len - 1] = 0;
    return 0;
}

int cuDeviceGetAttribute(int *value, int attribute, int device) {
    (void)device;
    *value = attribute == 75 ? 9 : 0; /* COMPUTE_CAPABILITY_MAJOR = 9, MINOR (76) = 0, anything else 0 */
    return 0;
}
