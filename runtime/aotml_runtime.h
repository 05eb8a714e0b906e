/* Internal to a model library: what the generated glue and the runtime share. Not installed. */
#ifndef AOTML_RUNTIME_H
#define AOTML_RUNTIME_H

#include "aotml.h"

#define AOTML_HIDDEN __attribute__((visibility("hidden")))
#define AOTML_EXPORT __attribute__((visibility("default")))

/* The compiled kernels' entry: buffer tables in manifest order, workspace, weights blob, the
 * symbols' values. Returns 0, or k > 0 when the run-time check whose message is errors[k - 1]
 * failed. */
typedef int (*aotml_entry_fn)(const void *const *inputs, void *const *outputs,
                              void *workspace, const void *weights, const int64_t *symbols);

/* A size as a polynomial over the symbols, in an int64 array: the number of terms, then per
 * term its coefficient (positive), its degree, and the index of each symbol factor. A static
 * size is one term of degree 0. */

/* The GPU side of a library built for CUDA: PTX per architecture, and the launches of one run.
 * A kernel takes a pointer per buffer argument, then the value of every symbol (int64), then a
 * pointer to the run's status word (int32; a failed check stores its message number there). */
enum { AOTML_GPU_INPUT = 0, AOTML_GPU_OUTPUT = 1, AOTML_GPU_WORKSPACE = 2, AOTML_GPU_WEIGHTS = 3 };

typedef struct aotml_gpu_arg {
    int32_t region;            /* an AOTML_GPU_* region */
    uint32_t index;            /* the input or output number */
    const int64_t *offset;     /* bytes into the workspace or the weights: a polynomial */
} aotml_gpu_arg;

typedef struct aotml_gpu_launch {
    uint32_t kernel;           /* index into aotml_gpu.kernels */
    uint32_t n_args;
    const aotml_gpu_arg *args;
    const int64_t *points;     /* the launch's index space (a polynomial); blocks of `threads`
                                  threads cover it, the last one guarded */
    uint32_t threads;
} aotml_gpu_launch;

typedef struct aotml_gpu_module {
    uint32_t sm;               /* compute capability it was compiled for: 80 for sm_80 */
    const char *ptx;           /* NUL-terminated PTX text */
} aotml_gpu_module;

typedef struct aotml_gpu {
    uint32_t n_modules;        /* ascending sm */
    const aotml_gpu_module *modules;
    uint32_t n_kernels;
    const char *const *kernels;
    uint32_t n_launches;
    const aotml_gpu_launch *launches;
    const int64_t *workspace;  /* device workspace bytes: a polynomial */
} aotml_gpu;

struct aotml_impl;
/* What gpu_run returns when the run should go to the CPU instead (device "cpu", or "auto"
 * with no usable GPU). Otherwise it returns as the entry does, or -status on a device error
 * with the message set. */
#define AOTML_GPU_DECLINED (-1000)
typedef int (*aotml_gpu_run_fn)(const struct aotml_impl *impl, const int64_t *symbols,
                                const void *const *inputs, void *const *outputs);

typedef struct aotml_impl {
    const aotml_model *model;
    aotml_entry_fn entry;
    const void *weights;
    const char *const *errors;
    uint32_t n_errors;
    /* per tensor (inputs, then outputs): the polynomials of its rank dims, then of its bytes */
    const int64_t *const *sizes;
    const int64_t *workspace;       /* the workspace bytes' polynomial */
    const aotml_gpu *gpu;           /* NULL for a CPU-only library */
    aotml_gpu_run_fn gpu_run;       /* NULL for a CPU-only library */
} aotml_impl;

AOTML_HIDDEN int aotml_rt_bind(const aotml_impl *impl, const int64_t *const *input_shapes,
                               int64_t *symbols);
AOTML_HIDDEN int aotml_rt_shape(const aotml_impl *impl, const int64_t *symbols, uint32_t index,
                                int64_t *shape, uint64_t *bytes);
AOTML_HIDDEN int aotml_rt_workspace_size(const aotml_impl *impl, const int64_t *symbols,
                                         uint64_t *bytes);
AOTML_HIDDEN int aotml_rt_run(const aotml_impl *impl, const int64_t *symbols,
                              const void *const *inputs, const uint64_t *input_bytes,
                              uint32_t n_inputs, void *const *outputs,
                              const uint64_t *output_bytes, uint32_t n_outputs, void *workspace,
                              uint64_t workspace_bytes);
AOTML_HIDDEN int aotml_rt_run_args(const aotml_impl *impl, const aotml_run_args *args);
/* The typed entry: buffers are taken to have the sizes the symbols give. */
AOTML_HIDDEN int aotml_rt_run_typed(const aotml_impl *impl, const int64_t *symbols,
                                    const void *const *inputs, void *const *outputs,
                                    void *workspace);
AOTML_HIDDEN const char *aotml_rt_last_error(void);
/* The status of a run whose kernels returned `check` (as the entry returns; < 0: minus a
 * device error's status, its message already set), with the message of a failed check. */
AOTML_HIDDEN int aotml_rt_run_status(const aotml_impl *impl, int check);
/* Sets the calling thread's error message; returns `status`. */
AOTML_HIDDEN int aotml_rt_fail(int status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Evaluates the polynomial at *p, moving *p past it; 0 when the value exceeds 2^62. */
AOTML_HIDDEN int aotml_rt_eval_poly(const int64_t **p, const int64_t *symbols, uint64_t *out);
/* The byte size of tensor `index` (inputs, then outputs) for valid symbols. */
AOTML_HIDDEN uint64_t aotml_rt_tensor_bytes(const aotml_impl *impl, const int64_t *symbols,
                                            uint32_t index);

/* The monotonic clock in nanoseconds: what a profiled build's entry reads around each kernel. */
AOTML_HIDDEN uint64_t aotml_rt_clock_ns(void);
/* aotml_profile.work: each kernel's flops and bytes from their polynomials (n of each, in
 * order), for symbols that pass aotml_rt_check_symbols. */
AOTML_HIDDEN int aotml_rt_profile_work(const aotml_impl *impl, uint32_t n,
                                       const int64_t *flops_polys, const int64_t *bytes_polys,
                                       const int64_t *symbols, uint64_t *flops,
                                       uint64_t *bytes);

/* Device choice for a library without GPU code: "cpu" and "auto" are accepted. */
AOTML_HIDDEN int aotml_rt_cpu_select_device(const char *name);
AOTML_HIDDEN const char *aotml_rt_cpu_device(void);
/* ...and for one with GPU code (aotml_cuda.c); `impl` is the library's. */
AOTML_HIDDEN int aotml_rt_gpu_select_device(const aotml_impl *impl, const char *name);
AOTML_HIDDEN const char *aotml_rt_gpu_device(const aotml_impl *impl);
AOTML_HIDDEN int aotml_rt_gpu_run(const aotml_impl *impl, const int64_t *symbols,
                                  const void *const *inputs, void *const *outputs);
/* A run on buffers already in device memory (CUdeviceptr values), for run_device. */
AOTML_HIDDEN int aotml_rt_gpu_run_device(const aotml_impl *impl, const int64_t *symbols,
                                         const uint64_t *inputs, const uint64_t *outputs);
AOTML_HIDDEN int aotml_rt_cpu_run_device(const int64_t *symbols, const uint64_t *inputs,
                                         const uint64_t *outputs);
/* The symbols are in range and every size they give fits (AOTML_OK, or the failure set). */
AOTML_HIDDEN int aotml_rt_check_symbols(const aotml_impl *impl, const int64_t *symbols);

/* A range [begin, end) of a parallel loop's iterations, run by one thread; returns 0 or a
 * failed check's status, as the entry does. */
typedef int (*aotml_task_fn)(void *ctx, int64_t begin, int64_t end);
/* Runs fn over [0, extent) on the pool, in ranges of at least `grain` iterations; returns the
 * status of the first range (in loop order) that failed, or 0. Called by the kernels. */
AOTML_HIDDEN int aotml_rt_parallel_for(aotml_task_fn fn, void *ctx, int64_t extent,
                                       int64_t grain);
/* The pool's size, caller included (n < 1: the default, $AOTML_NUM_THREADS or the cores this
 * process may run on); returns the size now in force. */
AOTML_HIDDEN int aotml_rt_set_num_threads(int n);
AOTML_HIDDEN int aotml_rt_num_threads(void);
/* The pool's exported entry points, which the three above call: the process's first loaded
 * library's serve every library (see the pool in aotml_runtime.c). The link lists them in
 * POOL_SYMBOLS (aotml/package/artifact.py) as the only symbols left interposable. */
AOTML_EXPORT int aotml_pool1_parallel_for(aotml_task_fn fn, void *ctx, int64_t extent,
                                          int64_t grain);
AOTML_EXPORT int aotml_pool1_set_num_threads(int n);
AOTML_EXPORT int aotml_pool1_num_threads(void);

#endif
