/* The GPU side of a model library built for CUDA: the driver API loaded with dlopen (nothing
 * links against CUDA, so the library loads on any machine), device choice, module load from
 * the embedded PTX, weights uploaded once, and a run: inputs copied in, the kernels launched
 * in order on one stream, outputs and the status word copied back.
 *
 * Only the driver API is used, through the few types and constants declared below (their
 * values are the driver's ABI, stable across CUDA versions). `$AOTML_CUDA_DRIVER` names
 * another driver library to load instead of libcuda.so.1: the tests point it at a stand-in
 * that runs the kernels' CPU emulation, so this file is exercised without a GPU.
 *
 * State is per library, like the thread pool: the device chosen, and once a run needs the GPU,
 * its context (the device's primary context, made current only around our calls, so an
 * application's own CUDA work is undisturbed), module, stream, weights and arena. A mutex
 * serializes GPU runs of one library, since they share the arena. */
#define _GNU_SOURCE
#include "aotml_runtime.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef unsigned long long CUdeviceptr;

enum {
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75,
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76,
    CU_JIT_ERROR_LOG_BUFFER = 5,
    CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6,
    CU_STREAM_NON_BLOCKING = 1,
};

#define MAX_PARAMS 256        /* per kernel: buffers, symbols, status (checked at build) */
#define ARENA_ALIGN 256       /* the alignment of each tensor in the device arena */
#define GPU_BUFFER_ALIGN 16   /* what every kernel assumes of its buffers (codegen/nvptx.py) */
#define MAX_GRID 2147483647u  /* gridDim.x */

/* The driver's entry points, by their exported (versioned) names. */
static struct {
    CUresult (*Init)(unsigned);
    CUresult (*DeviceGetCount)(int *);
    CUresult (*DeviceGet)(CUdevice *, int);
    CUresult (*DeviceGetName)(char *, int, CUdevice);
    CUresult (*DeviceGetAttribute)(int *, int, CUdevice);
    CUresult (*DevicePrimaryCtxRetain)(CUcontext *, CUdevice);
    CUresult (*DevicePrimaryCtxRelease)(CUdevice);
    CUresult (*CtxPushCurrent)(CUcontext);
    CUresult (*CtxPopCurrent)(CUcontext *);
    CUresult (*ModuleLoadDataEx)(CUmodule *, const void *, unsigned, int *, void **);
    CUresult (*ModuleUnload)(CUmodule);
    CUresult (*ModuleGetFunction)(CUfunction *, CUmodule, const char *);
    CUresult (*MemAlloc)(CUdeviceptr *, size_t);
    CUresult (*MemFree)(CUdeviceptr);
    CUresult (*MemcpyHtoD)(CUdeviceptr, const void *, size_t);
    CUresult (*MemcpyHtoDAsync)(CUdeviceptr, const void *, size_t, CUstream);
    CUresult (*MemcpyDtoHAsync)(void *, CUdeviceptr, size_t, CUstream);
    CUresult (*MemsetD32Async)(CUdeviceptr, unsigned, size_t, CUstream);
    CUresult (*StreamCreate)(CUstream *, unsigned);
    CUresult (*StreamDestroy)(CUstream);
    CUresult (*StreamSynchronize)(CUstream);
    CUresult (*LaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                             unsigned, unsigned, CUstream, void **, void **);
    CUresult (*GetErrorName)(CUresult, const char **);
    CUresult (*GetErrorString)(CUresult, const char **);
} cu;

static const struct { const char *name; size_t offset; } entry_points[] = {
#define ENTRY(field, symbol) {symbol, offsetof(__typeof__(cu), field)}
    ENTRY(Init, "cuInit"),
    ENTRY(DeviceGetCount, "cuDeviceGetCount"),
    ENTRY(DeviceGet, "cuDeviceGet"),
    ENTRY(DeviceGetName, "cuDeviceGetName"),
    ENTRY(DeviceGetAttribute, "cuDeviceGetAttribute"),
    ENTRY(DevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain"),
    ENTRY(DevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2"),
    ENTRY(CtxPushCurrent, "cuCtxPushCurrent_v2"),
    ENTRY(CtxPopCurrent, "cuCtxPopCurrent_v2"),
    ENTRY(ModuleLoadDataEx, "cuModuleLoadDataEx"),
    ENTRY(ModuleUnload, "cuModuleUnload"),
    ENTRY(ModuleGetFunction, "cuModuleGetFunction"),
    ENTRY(MemAlloc, "cuMemAlloc_v2"),
    ENTRY(MemFree, "cuMemFree_v2"),
    ENTRY(MemcpyHtoD, "cuMemcpyHtoD_v2"),
    ENTRY(MemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2"),
    ENTRY(MemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2"),
    ENTRY(MemsetD32Async, "cuMemsetD32Async"),
    ENTRY(StreamCreate, "cuStreamCreate"),
    ENTRY(StreamDestroy, "cuStreamDestroy_v2"),
    ENTRY(StreamSynchronize, "cuStreamSynchronize"),
    ENTRY(LaunchKernel, "cuLaunchKernel"),
    ENTRY(GetErrorName, "cuGetErrorName"),
    ENTRY(GetErrorString, "cuGetErrorString"),
#undef ENTRY
};

enum { CHOICE_AUTO, CHOICE_CPU, CHOICE_CUDA };

static struct {
    pthread_mutex_t lock;
    int choice;            /* CHOICE_* */
    int ordinal;           /* the CUDA device asked for */
    int tried;             /* the device was set up (or that failed) for `ordinal` */
    int ready;
    char why[768];         /* why the device cannot be used, when tried and not ready */
    char description[800]; /* "cuda:0 (NAME, sm_90)", or "none (why)" */
    void *driver;
    CUdevice dev;
    CUcontext ctx;
    CUmodule module;
    CUfunction *functions;
    CUstream stream;
    CUdeviceptr weights, arena;
    uint64_t arena_bytes;
} gpu = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* "cuXxx: CUDA_ERROR_NAME (what the driver says)" into `out`. */
static void describe_error(char *out, size_t n, const char *call, CUresult rc) {
    const char *name = NULL, *text = NULL;
    if (cu.GetErrorName) cu.GetErrorName(rc, &name);
    if (cu.GetErrorString) cu.GetErrorString(rc, &text);
    if (name)
        snprintf(out, n, "%s: %s (%s)", call, name, text ? text : "no description");
    else
        snprintf(out, n, "%s: CUDA error %d", call, rc);
}

static int load_driver(void) {
    if (gpu.driver) return 1;
    const char *path = getenv("AOTML_CUDA_DRIVER");
    if (!path || !*path) path = "libcuda.so.1";
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char *reason = dlerror();
        snprintf(gpu.why, sizeof gpu.why, "no CUDA driver: cannot load %s (%s)", path,
                 reason ? reason : "not found");
        return 0;
    }
    for (size_t k = 0; k < sizeof entry_points / sizeof entry_points[0]; k++) {
        void *fn = dlsym(lib, entry_points[k].name);
        if (!fn) {
            snprintf(gpu.why, sizeof gpu.why, "the CUDA driver %s lacks %s (too old?)", path,
                     entry_points[k].name);
            memset(&cu, 0, sizeof cu);
            dlclose(lib);
            return 0;
        }
        memcpy((char *)&cu + entry_points[k].offset, &fn, sizeof fn);
    }
    gpu.driver = lib;
    return 1;
}

/* With the lock held and the context current: free the device memory, module and stream. */
static void release_device(void) {
    if (gpu.arena) cu.MemFree(gpu.arena);
    if (gpu.weights) cu.MemFree(gpu.weights);
    if (gpu.stream) cu.StreamDestroy(gpu.stream);
    if (gpu.module) cu.ModuleUnload(gpu.module);
    free(gpu.functions);
    gpu.arena = gpu.weights = 0;
    gpu.arena_bytes = 0;
    gpu.stream = NULL;
    gpu.module = NULL;
    gpu.functions = NULL;
}

/* With the lock held: forget the device set up so far (a choice of another device). */
static void forget_device(void) {
    if (gpu.ready) {
        CUcontext popped;
        if (cu.CtxPushCurrent(gpu.ctx) == 0) {
            release_device();
            cu.CtxPopCurrent(&popped);
        }
        cu.DevicePrimaryCtxRelease(gpu.dev);
    }
    gpu.ready = gpu.tried = 0;
    gpu.why[0] = '\0';
}

#define CHECK(call, what)                                                         \
    do {                                                                          \
        CUresult rc_ = (call);                                                    \
        if (rc_ != 0) {                                                           \
            describe_error(gpu.why, sizeof gpu.why, what, rc_);                   \
            goto failed;                                                          \
        }                                                                         \
    } while (0)

/* With the lock held: set up device `gpu.ordinal` for this library, once. Returns whether it
 * is ready; if not, `gpu.why` says why. */
static int set_up(const aotml_impl *impl) {
    if (gpu.tried) return gpu.ready;
    gpu.tried = 1;
    if (!load_driver()) return 0;
    const aotml_gpu *g = impl->gpu;
    int count = 0, major = 0, minor = 0, pushed = 0, retained = 0;
    char name[128] = "";
    CUcontext popped;
    CHECK(cu.Init(0), "cuInit");
    CHECK(cu.DeviceGetCount(&count), "cuDeviceGetCount");
    if (gpu.ordinal >= count) {
        snprintf(gpu.why, sizeof gpu.why, "no CUDA device %d: the driver sees %d", gpu.ordinal,
                 count);
        return 0;
    }
    CHECK(cu.DeviceGet(&gpu.dev, gpu.ordinal), "cuDeviceGet");
    CHECK(cu.DeviceGetName(name, sizeof name - 1, gpu.dev), "cuDeviceGetName");
    CHECK(cu.DeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, gpu.dev),
          "cuDeviceGetAttribute");
    CHECK(cu.DeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, gpu.dev),
          "cuDeviceGetAttribute");
    /* the newest PTX the device can run: the driver compiles it for the device itself */
    uint32_t sm = (uint32_t)(major * 10 + minor);
    const aotml_gpu_module *mod = NULL;
    for (uint32_t k = 0; k < g->n_modules; k++)
        if (g->modules[k].sm <= sm) mod = &g->modules[k];
    if (!mod) {
        char have[128] = "";
        size_t used = 0;
        for (uint32_t k = 0; k < g->n_modules && used < sizeof have; k++)
            used += (size_t)snprintf(have + used, sizeof have - used, "%ssm_%u", k ? ", " : "",
                                     g->modules[k].sm);
        snprintf(gpu.why, sizeof gpu.why, "CUDA device %d (%s) is sm_%u, but the library has "
                 "PTX only for %s: rebuild with --target cuda:sm_%u", gpu.ordinal, name, sm,
                 have, sm);
        return 0;
    }
    CHECK(cu.DevicePrimaryCtxRetain(&gpu.ctx, gpu.dev), "cuDevicePrimaryCtxRetain");
    retained = 1;
    CHECK(cu.CtxPushCurrent(gpu.ctx), "cuCtxPushCurrent");
    pushed = 1;
    {
        char log[4096] = "";
        int options[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
        void *values[] = {log, (void *)(uintptr_t)sizeof log};
        CUresult rc = cu.ModuleLoadDataEx(&gpu.module, mod->ptx, 2, options, values);
        if (rc != 0) {
            char head[256];
            describe_error(head, sizeof head, "cuModuleLoadDataEx", rc);
            snprintf(gpu.why, sizeof gpu.why, "loading the sm_%u PTX on %s: %s%s%s", mod->sm,
                     name, head, *log ? ": " : "", log);
            goto failed;
        }
    }
    gpu.functions = calloc(g->n_kernels ? g->n_kernels : 1, sizeof *gpu.functions);
    if (!gpu.functions) {
        snprintf(gpu.why, sizeof gpu.why, "out of host memory");
        goto failed;
    }
    for (uint32_t k = 0; k < g->n_kernels; k++)
        CHECK(cu.ModuleGetFunction(&gpu.functions[k], gpu.module, g->kernels[k]),
              "cuModuleGetFunction");
    CHECK(cu.StreamCreate(&gpu.stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
    uint64_t wbytes = impl->model->weights_bytes;
    if (wbytes) {
        CHECK(cu.MemAlloc(&gpu.weights, (size_t)wbytes), "cuMemAlloc (weights)");
        CHECK(cu.MemcpyHtoD(gpu.weights, impl->weights, (size_t)wbytes), "cuMemcpyHtoD (weights)");
    }
    cu.CtxPopCurrent(&popped);
    snprintf(gpu.description, sizeof gpu.description, "cuda:%d (%s, sm_%u)", gpu.ordinal, name,
             sm);
    gpu.ready = 1;
    return 1;
failed:
    if (pushed) {
        release_device();
        cu.CtxPopCurrent(&popped);
    }
    if (retained) cu.DevicePrimaryCtxRelease(gpu.dev);
    return 0;
}

static int parse_device(const char *name, int *choice, int *ordinal) {
    *ordinal = 0;
    if (strcmp(name, "auto") == 0) {
        *choice = CHOICE_AUTO;
    } else if (strcmp(name, "cpu") == 0) {
        *choice = CHOICE_CPU;
    } else if (strcmp(name, "cuda") == 0) {
        *choice = CHOICE_CUDA;
    } else if (strncmp(name, "cuda:", 5) == 0 && name[5]) {
        char *end;
        long n = strtol(name + 5, &end, 10);
        if (*end || n < 0 || n > 1023) return 0;
        *choice = CHOICE_CUDA;
        *ordinal = (int)n;
    } else {
        return 0;
    }
    return 1;
}

AOTML_HIDDEN int aotml_rt_gpu_select_device(const aotml_impl *impl, const char *name) {
    if (!name) return aotml_rt_fail(AOTML_ERR_NULL_POINTER, "the device name is NULL");
    int choice, ordinal;
    if (!parse_device(name, &choice, &ordinal))
        return aotml_rt_fail(AOTML_ERR_DEVICE, "unknown device '%s'; known: auto, cpu, cuda, "
                             "cuda:N", name);
    if (choice == CHOICE_CPU && !impl->entry)
        return aotml_rt_fail(AOTML_ERR_DEVICE, "this library has no CPU code (it was built "
                             "for cuda only); rebuild it with --target cpu,cuda to run on the "
                             "CPU");
    pthread_mutex_lock(&gpu.lock);
    if (choice != CHOICE_CPU && ordinal != gpu.ordinal) {
        forget_device();
        gpu.ordinal = ordinal;
    }
    int rc = AOTML_OK;
    if (choice == CHOICE_CUDA && !set_up(impl))
        rc = aotml_rt_fail(AOTML_ERR_DEVICE, "cannot run on %s: %s", name, gpu.why);
    else
        gpu.choice = choice;
    pthread_mutex_unlock(&gpu.lock);
    return rc;
}

/* With the lock held: whether this run goes to the GPU; under "auto" that is decided here. */
static int on_gpu(const aotml_impl *impl) {
    if (gpu.choice == CHOICE_CPU) return 0;
    if (gpu.choice == CHOICE_AUTO && impl->entry) return set_up(impl);
    return 1;
}

AOTML_HIDDEN const char *aotml_rt_gpu_device(const aotml_impl *impl) {
    pthread_mutex_lock(&gpu.lock);
    const char *d = "cpu";
    if (on_gpu(impl)) {
        if (!set_up(impl))
            snprintf(gpu.description, sizeof gpu.description, "none (%s)", gpu.why);
        d = gpu.description;
    }
    pthread_mutex_unlock(&gpu.lock);
    return d;
}

static uint64_t align_up(uint64_t n) { return (n + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN; }

static uint64_t poly(const int64_t *p, const int64_t *symbols) {
    uint64_t value;
    aotml_rt_eval_poly(&p, symbols, &value);
    return value;
}

/* With the lock held and the device set up: one run. Host buffers (`inputs`, `outputs`) are
 * copied through the arena; device ones (`dev_inputs`, `dev_outputs`, when given) are used
 * where they are. Returns as aotml_rt_gpu_run does. */
static int launch_run(const aotml_impl *impl, const int64_t *symbols, const void *const *inputs,
                      void *const *outputs, const uint64_t *dev_inputs,
                      const uint64_t *dev_outputs) {
    const aotml_model *m = impl->model;
    const aotml_gpu *g = impl->gpu;
    /* the arena: workspace, then (for host buffers) inputs and outputs, then the status word */
    uint32_t n = m->n_inputs + m->n_outputs;
    uint64_t offsets[n + 1];
    uint64_t total = align_up(poly(g->workspace, symbols));
    for (uint32_t k = 0; k < n; k++) {
        offsets[k] = total;
        if (!dev_inputs) total += align_up(aotml_rt_tensor_bytes(impl, symbols, k));
    }
    offsets[n] = total;
    total += sizeof(int32_t);

    int32_t status = 0;
    char what[256];
    CUcontext popped;
    CUresult rc = cu.CtxPushCurrent(gpu.ctx);
    if (rc != 0) {
        describe_error(what, sizeof what, "cuCtxPushCurrent", rc);
        return -aotml_rt_fail(AOTML_ERR_DEVICE, "%s", what);
    }
#define RUN_CHECK(call, ...)                                                    \
    do {                                                                        \
        if ((rc = (call)) != 0) {                                               \
            char where_[160];                                                   \
            snprintf(where_, sizeof where_, __VA_ARGS__);                       \
            describe_error(what, sizeof what, where_, rc);                      \
            goto done;                                                          \
        }                                                                       \
    } while (0)
    if (total > gpu.arena_bytes) {
        if (gpu.arena) {
            /* the previous run's work on the stream is finished: each run ends synchronized */
            cu.MemFree(gpu.arena);
            gpu.arena = 0;
            gpu.arena_bytes = 0;
        }
        RUN_CHECK(cu.MemAlloc(&gpu.arena, (size_t)total), "cuMemAlloc (%llu bytes of arena)",
                  (unsigned long long)total);
        gpu.arena_bytes = total;
    }
    RUN_CHECK(cu.MemsetD32Async(gpu.arena + offsets[n], 0, 1, gpu.stream), "cuMemsetD32Async");
    for (uint32_t k = 0; k < m->n_inputs && !dev_inputs; k++)
        RUN_CHECK(cu.MemcpyHtoDAsync(gpu.arena + offsets[k], inputs[k],
                                     (size_t)aotml_rt_tensor_bytes(impl, symbols, k),
                                     gpu.stream),
                  "cuMemcpyHtoDAsync (input '%s')", m->inputs[k].name);
    for (uint32_t l = 0; l < g->n_launches; l++) {
        const aotml_gpu_launch *launch = &g->launches[l];
        CUdeviceptr pointers[MAX_PARAMS];
        void *params[MAX_PARAMS];
        uint32_t np = 0;
        for (uint32_t a = 0; a < launch->n_args; a++) {
            const aotml_gpu_arg *arg = &launch->args[a];
            switch (arg->region) {
            case AOTML_GPU_INPUT:
                pointers[a] = dev_inputs ? dev_inputs[arg->index]
                                         : gpu.arena + offsets[arg->index];
                break;
            case AOTML_GPU_OUTPUT:
                pointers[a] = dev_outputs ? dev_outputs[arg->index]
                                          : gpu.arena + offsets[m->n_inputs + arg->index];
                break;
            case AOTML_GPU_WORKSPACE: pointers[a] = gpu.arena + poly(arg->offset, symbols); break;
            default: pointers[a] = gpu.weights + poly(arg->offset, symbols); break;
            }
            params[np++] = &pointers[a];
        }
        for (uint32_t s = 0; s < m->n_symbols; s++) params[np++] = (void *)&symbols[s];
        CUdeviceptr status_ptr = gpu.arena + offsets[n];
        params[np++] = &status_ptr;
        uint64_t points = poly(launch->points, symbols);
        uint64_t blocks = (points + launch->threads - 1) / launch->threads;
        const char *kernel = g->kernels[launch->kernel];
        if (blocks > MAX_GRID) {
            snprintf(what, sizeof what, "kernel %s needs %llu blocks, above the grid's limit of "
                     "%u", kernel, (unsigned long long)blocks, MAX_GRID);
            rc = 1;
            goto done;
        }
        RUN_CHECK(cu.LaunchKernel(gpu.functions[launch->kernel], (unsigned)blocks, 1, 1,
                                  launch->threads, 1, 1, 0, gpu.stream, params, NULL),
                  "cuLaunchKernel (%s)", kernel);
    }
    for (uint32_t k = 0; k < m->n_outputs && !dev_outputs; k++)
        RUN_CHECK(cu.MemcpyDtoHAsync(outputs[k], gpu.arena + offsets[m->n_inputs + k],
                                     (size_t)aotml_rt_tensor_bytes(impl, symbols,
                                                                   m->n_inputs + k),
                                     gpu.stream),
                  "cuMemcpyDtoHAsync (output '%s')", m->outputs[k].name);
    RUN_CHECK(cu.MemcpyDtoHAsync(&status, gpu.arena + offsets[n], sizeof status, gpu.stream),
              "cuMemcpyDtoHAsync (status)");
    RUN_CHECK(cu.StreamSynchronize(gpu.stream), "cuStreamSynchronize");
#undef RUN_CHECK
done:
    if (rc != 0) cu.StreamSynchronize(gpu.stream); /* nothing queued may outlive the call */
    cu.CtxPopCurrent(&popped);
    if (rc != 0) return -aotml_rt_fail(AOTML_ERR_DEVICE, "%s", what);
    return status;
}

AOTML_HIDDEN int aotml_rt_gpu_run(const aotml_impl *impl, const int64_t *symbols,
                                  const void *const *inputs, void *const *outputs) {
    pthread_mutex_lock(&gpu.lock);
    int rc;
    if (!on_gpu(impl))
        rc = AOTML_GPU_DECLINED;
    else if (!set_up(impl))
        rc = -aotml_rt_fail(AOTML_ERR_DEVICE, "cannot run on the GPU: %s", gpu.why);
    else
        rc = launch_run(impl, symbols, inputs, outputs, NULL, NULL);
    pthread_mutex_unlock(&gpu.lock);
    return rc;
}

AOTML_HIDDEN int aotml_rt_gpu_run_device(const aotml_impl *impl, const int64_t *symbols,
                                         const uint64_t *inputs, const uint64_t *outputs) {
    const aotml_model *m = impl->model;
    int rc = aotml_rt_check_symbols(impl, symbols);
    if (rc) return rc;
    if ((m->n_inputs && !inputs) || (m->n_outputs && !outputs))
        return aotml_rt_fail(AOTML_ERR_NULL_POINTER, "the device pointer array is NULL");
    for (uint32_t k = 0; k < m->n_inputs + m->n_outputs; k++) {
        int in = k < m->n_inputs;
        uint64_t ptr = in ? inputs[k] : outputs[k - m->n_inputs];
        const char *kind = in ? "input" : "output";
        const char *name = in ? m->inputs[k].name : m->outputs[k - m->n_inputs].name;
        if (!ptr)
            return aotml_rt_fail(AOTML_ERR_NULL_POINTER, "%s '%s' is a NULL device pointer",
                                 kind, name);
        if (ptr % GPU_BUFFER_ALIGN)
            return aotml_rt_fail(AOTML_ERR_DEVICE, "%s '%s' at device address 0x%llx is not "
                                 "%d-byte aligned (the kernels move %d bytes at a time): pass "
                                 "an aligned tensor, as a fresh allocation is", kind, name,
                                 (unsigned long long)ptr, GPU_BUFFER_ALIGN, GPU_BUFFER_ALIGN);
    }
    pthread_mutex_lock(&gpu.lock);
    if (gpu.choice == CHOICE_CPU)
        rc = aotml_rt_fail(AOTML_ERR_DEVICE, "device pointers need the GPU, but the device "
                           "chosen is the CPU");
    else if (!set_up(impl))
        rc = aotml_rt_fail(AOTML_ERR_DEVICE, "cannot run on the GPU: %s", gpu.why);
    else
        rc = aotml_rt_run_status(impl, launch_run(impl, symbols, NULL, NULL, inputs, outputs));
    pthread_mutex_unlock(&gpu.lock);
    return rc;
}
