/* A stand-in for the CUDA driver (libcuda.so.1), for testing the runtime's GPU side on
 * machines without a GPU. The runtime loads it when $AOTML_CUDA_DRIVER names it.
 *
 * Device memory is host memory. A module "loads" when its text is PTX for an architecture the
 * device can run; a function exists when the module has its .entry. A launch runs the kernel's
 * CPU emulation (aotml/gpu/emulate.py, the library $FAKE_CUDA_EMULATION names when the module
 * is loaded), one block after another over the grid it is given, so a wrong grid or
 * parameter shows in the results; a block size other than the kernel's is refused.
 *
 * Knobs (environment):
 *   FAKE_CUDA_SM           the device's compute capability as 80, 90 (default 90)
 *   FAKE_CUDA_DEVICES      how many devices (default 1)
 *   FAKE_CUDA_INIT_ERROR   cuInit returns this code (e.g. 100, CUDA_ERROR_NO_DEVICE)
 *   FAKE_CUDA_MAX_ALLOC    cuMemAlloc fails with CUDA_ERROR_OUT_OF_MEMORY above these bytes
 *   FAKE_CUDA_LAUNCH_ERROR cuLaunchKernel returns this code
 *   FAKE_CUDA_LOG          a file to append one line per call of interest to
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct { const char *ptx; void *emulation; } module_t;
typedef struct { void (*run)(void **); int64_t *ctaid_x; const int32_t *threads; } function_t;

static int initialized, pushed;

static long knob(const char *name, long fallback) {
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : fallback;
}

static void note(const char *fmt, ...) {
    const char *path = getenv("FAKE_CUDA_LOG");
    if (!path || !*path) return;
    FILE *f = fopen(path, "a");
    if (!f) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
    fclose(f);
}

CUresult cuGetErrorName(CUresult rc, const char **out) {
    switch (rc) {
    case 0: *out = "CUDA_SUCCESS"; return 0;
    case 2: *out = "CUDA_ERROR_OUT_OF_MEMORY"; return 0;
    case 3: *out = "CUDA_ERROR_NOT_INITIALIZED"; return 0;
    case 100: *out = "CUDA_ERROR_NO_DEVICE"; return 0;
    case 101: *out = "CUDA_ERROR_INVALID_DEVICE"; return 0;
    case 201: *out = "CUDA_ERROR_INVALID_CONTEXT"; return 0;
    case 218: *out = "CUDA_ERROR_INVALID_PTX"; return 0;
    case 500: *out = "CUDA_ERROR_NOT_FOUND"; return 0;
    case 719: *out = "CUDA_ERROR_LAUNCH_FAILED"; return 0;
    default: *out = NULL; return 1;
    }
}

CUresult cuGetErrorString(CUresult rc, const char **out) {
    switch (rc) {
    case 2: *out = "out of memory"; return 0;
    case 100: *out = "no CUDA-capable device is detected"; return 0;
    case 218: *out = "a PTX JIT compilation failed"; return 0;
    case 719: *out = "unspecified launch failure"; return 0;
    default: *out = "fake error"; return 0;
    }
}

CUresult cuInit(unsigned flags) {
    (void)flags;
    long rc = knob("FAKE_CUDA_INIT_ERROR", 0);
    if (rc) return (CUresult)rc;
    initialized = 1;
    note("init");
    return 0;
}

CUresult cuDeviceGetCount(int *n) {
    if (!initialized) return 3;
    *n = (int)knob("FAKE_CUDA_DEVICES", 1);
    return 0;
}

CUresult cuDeviceGet(CUdevice *d, int ordinal) {
    if (!initialized) return 3;
    if (ordinal < 0 || ordinal >= knob("FAKE_CUDA_DEVICES", 1)) return 101;
    *d = ordinal;
    return 0;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
    snprintf(name, (size_t)len, "Fake GPU %d", d);
    return 0;
}

CUresult cuDeviceGetAttribute(int *value, int attribute, CUdevice d) {
    (void)d;
    long sm = knob("FAKE_CUDA_SM", 90);
    if (attribute == 75) *value = (int)(sm / 10);
    else if (attribute == 76) *value = (int)(sm % 10);
    else return 1;
    return 0;
}

CUresult cuDevicePrimaryCtxRetain(void **ctx, CUdevice d) {
    *ctx = (void *)(intptr_t)(d + 1);
    note("retain %d", d);
    return 0;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) {
    note("release %d", d);
    return 0;
}

CUresult cuCtxPushCurrent_v2(void *ctx) {
    (void)ctx;
    pushed++;
    return 0;
}

CUresult cuCtxPopCurrent_v2(void **ctx) {
    if (ctx) *ctx = NULL;
    if (pushed == 0) return 201;
    pushed--;
    return 0;
}

CUresult cuModuleLoadDataEx(void **module, const void *image, unsigned n, int *options,
                            void **values) {
    if (!pushed) return 201;
    const char *ptx = image;
    const char *target = strstr(ptx, ".target sm_");
    long sm = target ? strtol(target + 11, NULL, 10) : 0;
    if (!strstr(ptx, ".version") || !target || sm > knob("FAKE_CUDA_SM", 90)) {
        for (unsigned k = 0; k < n; k++)
            if (options[k] == 5) /* CU_JIT_ERROR_LOG_BUFFER */
                snprintf(values[k], 64, "ptx targets sm_%ld, newer than the device", sm);
        return 218;
    }
    module_t *m = malloc(sizeof *m);
    m->ptx = ptx;
    /* the kernels' emulation: the library named now (each test builds its own) */
    const char *path = getenv("FAKE_CUDA_EMULATION");
    m->emulation = path && *path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
    *module = m;
    note("load sm_%ld", sm);
    return 0;
}

CUresult cuModuleUnload(void *module) {
    free(module);
    note("unload");
    return 0;
}

CUresult cuModuleGetFunction(void **fn, void *module, const char *name) {
    module_t *m = module;
    char entry[512];
    snprintf(entry, sizeof entry, ".entry %s(", name);
    if (!strstr(m->ptx, entry)) return 500;
    function_t *f = malloc(sizeof *f); /* kept until exit: the runtime holds it as long */
    char symbol[512];
    snprintf(symbol, sizeof symbol, "aotml_emu_%s", name);
    f->run = NULL;
    f->ctaid_x = NULL;
    f->threads = NULL;
    if (m->emulation) {
        f->run = (void (*)(void **))dlsym(m->emulation, symbol);
        f->ctaid_x = dlsym(m->emulation, "aotml_emu_ctaid_x");
        snprintf(symbol, sizeof symbol, "aotml_emu_%s_threads", name);
        f->threads = dlsym(m->emulation, symbol);
    }
    *fn = f;
    return 0;
}

CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t bytes) {
    if (!pushed) return 201;
    long max = knob("FAKE_CUDA_MAX_ALLOC", 0);
    if (max && bytes > (size_t)max) return 2;
    void *mem = aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!mem) return 2;
    memset(mem, 0xA5, bytes); /* garbage, as fresh device memory may hold */
    *p = (CUdeviceptr)(uintptr_t)mem;
    note("alloc %zu", bytes);
    return 0;
}

CUresult cuMemFree_v2(CUdeviceptr p) {
    free((void *)(uintptr_t)p);
    note("free");
    return 0;
}

CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n) {
    memcpy((void *)(uintptr_t)dst, src, n);
    note("htod %zu", n);
    return 0;
}

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, void *stream) {
    (void)stream;
    memcpy((void *)(uintptr_t)dst, src, n);
    note("htod %zu", n);
    return 0;
}

CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, void *stream) {
    (void)stream;
    memcpy(dst, (const void *)(uintptr_t)src, n);
    note("dtoh %zu", n);
    return 0;
}

CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned value, size_t n, void *stream) {
    (void)stream;
    for (size_t k = 0; k < n; k++) ((uint32_t *)(uintptr_t)dst)[k] = value;
    return 0;
}

CUresult cuStreamCreate(void **stream, unsigned flags) {
    *stream = malloc(1);
    note("stream %u", flags);
    return 0;
}

CUresult cuStreamDestroy_v2(void *stream) {
    free(stream);
    return 0;
}

CUresult cuStreamSynchronize(void *stream) {
    (void)stream;
    return pushed ? 0 : 201;
}

CUresult cuLaunchKernel(void *fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                        unsigned by, unsigned bz, unsigned shared, void *stream, void **params,
                        void **extra) {
    (void)stream;
    (void)extra;
    if (!pushed) return 201;
    long rc = knob("FAKE_CUDA_LAUNCH_ERROR", 0);
    if (rc) return (CUresult)rc;
    function_t *f = fn;
    if (!f->run || !f->ctaid_x || !f->threads) return 500;
    /* CUDA_ERROR_INVALID_VALUE: the runtime launches 1-D grids of the kernel's block size */
    if (gx == 0 || gy != 1 || gz != 1 || bx != (unsigned)*f->threads || by != 1 || bz != 1 ||
        shared)
        return 1;
    note("launch %u %u", gx, bx);
    for (unsigned b = 0; b < gx; b++) {
        *f->ctaid_x = b;
        f->run(params);
    }
    return 0;
}
