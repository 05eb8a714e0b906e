/* aotml: the ABI shared by every compiled model (.so) and its callers.
 *
 * A model library exports `const aotml_model *aotml_model_v1(void)` (for loaders that dlopen it;
 * the name stays across ABI versions, the struct's `abi_version` says which layout it has) and
 * `<name>_model()` (for C programs that link it), plus a typed `<name>_run(...)` declared in the
 * model's own header. Every entry point checks its arguments and returns an aotml_status; the
 * message for the last failure on the calling thread is `model->last_error()`.
 *
 * Symbolic dims: a model may declare dims such as N whose values come from the inputs' shapes at
 * run time. `bind` reads them from the input shapes (checking every dim), `shape` and
 * `workspace_size` say how large the outputs and the workspace are for those values, and `run`
 * takes them first. A model without symbols has n_symbols 0 and takes a NULL symbol array.
 * A model holds no mutable state: several threads may run it at once, each with its own
 * workspace.
 */
#ifndef AOTML_H
#define AOTML_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define AOTML_ABI_VERSION 6

typedef enum aotml_status {
    AOTML_OK = 0,
    AOTML_ERR_NULL_POINTER = 1,   /* a required pointer is NULL */
    AOTML_ERR_ARG_COUNT = 2,      /* wrong number of inputs or outputs */
    AOTML_ERR_ARG_SIZE = 3,       /* an input or output buffer has the wrong byte size */
    AOTML_ERR_WORKSPACE = 4,      /* workspace too small */
    AOTML_ERR_OVERLAP = 5,        /* an output overlaps an input, another output or the workspace */
    AOTML_ERR_OUT_OF_MEMORY = 6,  /* the generic entry could not allocate a workspace */
    AOTML_ERR_RUNTIME = 7,        /* a check inside the model failed (e.g. an index out of
                                     range); the outputs are then unspecified */
    AOTML_ERR_SHAPE = 8,          /* an input shape disagrees with the model or with another
                                     input, or a symbol is out of its range */
    AOTML_ERR_DEVICE = 9          /* the device asked for cannot be used (no GPU code in the
                                     library, no CUDA driver or device, no PTX for its
                                     architecture), or it failed (the CUDA error is named) */
} aotml_status;

/* The devices a library has code for (aotml_model.devices). */
#define AOTML_DEVICE_CPU 1u
#define AOTML_DEVICE_CUDA 2u

typedef enum aotml_dtype {
    AOTML_F32 = 1,
    AOTML_F16 = 2,    /* IEEE binary16, passed as uint16_t bits */
    AOTML_BF16 = 3,   /* bfloat16, passed as uint16_t bits */
    AOTML_I32 = 4,
    AOTML_I64 = 5,
    AOTML_BOOL = 6    /* one byte, 0 or 1 */
} aotml_dtype;

typedef struct aotml_tensor_info {
    const char *name;
    int32_t dtype;            /* an aotml_dtype */
    int32_t rank;
    const int64_t *shape;     /* rank entries; -1 for a dim that depends on a symbol */
    uint64_t bytes;           /* dense row-major size; 0 when it depends on a symbol */
    const char *const *dims;  /* rank strings: each dim as the model states it ("N", "784",
                                 "N*16") */
} aotml_tensor_info;

typedef struct aotml_symbol {
    const char *name;
    int64_t max;              /* the declared upper bound, or 0 when unbounded; every symbol
                                 is at least 1 */
} aotml_symbol;

/* The arguments of `run` in one record, for `run_args`. */
typedef struct aotml_run_args {
    const int64_t *symbols;
    const void *const *inputs;
    const uint64_t *input_bytes;
    uint32_t n_inputs;
    void *const *outputs;
    const uint64_t *output_bytes;
    uint32_t n_outputs;
    void *workspace;
    uint64_t workspace_bytes;
} aotml_run_args;

/* Where a run's time went, kernel by kernel, in a library built with `aotml build --profile`
 * (aotml_model.profile; NULL in other builds). A profiled build runs the same kernels and gives
 * the same bits; it adds one clock read per kernel (clock_gettime, CLOCK_MONOTONIC). */
typedef struct aotml_profile {
    uint32_t n_kernels;           /* in the order a run launches them */
    const char *const *kernels;   /* each kernel's name, also its function's symbol (perf) */
    const char *const *ops;       /* the graph ops fused into each, joined by " + " */
    /* The floating-point operations and the bytes of memory traffic of each kernel
     * (n_kernels each) for these symbol values, counted as `aotml build --report` does. */
    int (*work)(const int64_t *symbols, uint64_t *flops, uint64_t *bytes);
    /* Counters, zeroed only by the caller. Every kernel of a CPU run adds the nanoseconds it
     * took on the calling thread's clock (its parallel loops' threads work inside that time);
     * each run that completes adds one to *runs. Concurrent runs add atomically. GPU runs add
     * nothing. */
    uint64_t *ns;
    uint64_t *runs;
} aotml_profile;

typedef struct aotml_model {
    uint32_t abi_version;     /* AOTML_ABI_VERSION the model was built for */
    const char *aotml_version;
    const char *name;
    const char *build_hash;   /* sha256 of the source, weights, flags and compiler version */
    uint32_t n_inputs;
    const aotml_tensor_info *inputs;
    uint32_t n_outputs;
    const aotml_tensor_info *outputs;
    uint32_t n_symbols;
    const aotml_symbol *symbols;
    /* Scratch a run needs, whatever the symbols' values within their bounds; 64-byte alignment
     * is best. 0 when it depends on an unbounded symbol: ask workspace_size. */
    uint64_t workspace_bytes;
    uint64_t weights_bytes;
    /* Reads the symbols' values from the inputs' shapes (input_shapes[i] points at
     * inputs[i].rank dims) into symbols[n_symbols], checking that every static dim matches,
     * that all inputs agree on each symbol, that each is within its bounds, and that every
     * size fits in 64 bits. */
    int (*bind)(const int64_t *const *input_shapes, int64_t *symbols);
    /* The shape (rank entries) and byte size of tensor `index` (inputs first, then outputs)
     * for these symbol values. */
    int (*shape)(const int64_t *symbols, uint32_t index, int64_t *shape, uint64_t *bytes);
    /* The workspace bytes a run with these symbol values needs. */
    int (*workspace_size)(const int64_t *symbols, uint64_t *bytes);
    /* Runs the model for these symbol values. input_bytes/output_bytes give each buffer's size
     * and are checked against the sizes the symbols give. `workspace` may be NULL with
     * workspace_bytes 0: the call then allocates and frees one itself (the typed entry never
     * allocates). */
    int (*run)(const int64_t *symbols, const void *const *inputs, const uint64_t *input_bytes,
               uint32_t n_inputs, void *const *outputs, const uint64_t *output_bytes,
               uint32_t n_outputs, void *workspace, uint64_t workspace_bytes);
    /* The message of the last failed call on this thread ("" if none). */
    const char *(*last_error)(void);
    /* The threads a run may use, the calling thread included: one pool per process, shared
     * by the model libraries in the global symbol scope (linked into the program, or loaded
     * with RTLD_GLOBAL as aotml.load does; one loaded RTLD_LOCAL keeps a pool of its own),
     * started on first use. n < 1 restores the default: $AOTML_NUM_THREADS, else the cores
     * this process may run on. Returns the count now in force. Results are the same bit for
     * bit at every count. A run that finds the pool busy with another thread's run goes
     * alone on its calling thread, so concurrent runs never oversubscribe the cores. */
    int (*set_num_threads)(int n);
    int (*num_threads)(void);
    /* AOTML_DEVICE_* bits: the code this library holds. */
    uint32_t devices;
    /* Where runs go, for every caller of this library: "cpu", "cuda"
     * (device 0), "cuda:N", or "auto", the default: the GPU when the library has GPU code and a
     * CUDA driver with a usable device is present, else the CPU. Choosing a GPU loads the
     * driver (dlopen; nothing links against CUDA), loads the PTX for the device's
     * architecture and uploads the weights, once; failures return AOTML_ERR_DEVICE with the
     * reason. GPU runs take the same host buffers (copied in and out on one stream) and keep
     * their workspace in device memory, allocated on the first run and grown when a larger
     * one is needed; they are serialized per library. */
    int (*select_device)(const char *name);
    /* The device runs go to now: "cpu", or "cuda:0 (NAME, sm_90)". Under "auto", asking
     * makes the choice. */
    const char *(*device)(void);
    /* Runs on buffers already in GPU memory (CUdeviceptr values, dense row-major, of the sizes
     * the symbols give: nothing can check them, and 16-byte aligned: the kernels move 16
     * bytes at a time), with no copy to or from the host; returns once the run is done.
     * Needs GPU code and a GPU (AOTML_ERR_DEVICE otherwise, or for a misaligned pointer). */
    int (*run_device)(const int64_t *symbols, const uint64_t *inputs, const uint64_t *outputs);
    /* `run` with its arguments in one record (NULL: AOTML_ERR_NULL_POINTER), for callers
     * that pay for each argument they pass: Python's cffi takes ~40 ns an argument, so a
     * prepared call (aotml.Model.prepare) fills the record once and passes one pointer. */
    int (*run_args)(const aotml_run_args *args);
    /* The kernels' times, for a library built with --profile; NULL otherwise. */
    const aotml_profile *profile;
} aotml_model;

#ifdef __cplusplus
}
#endif

#endif /* AOTML_H */
