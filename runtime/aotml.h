/* aotml: the ABI shared by every compiled model (.so) and its callers.
 *
 * A model library exports `const aotml_model *aotml_model_v1(void)` (for loaders that dlopen it)
 * and `<name>_model()` (for C programs that link it), plus a typed `<name>_run(...)` declared in
 * the model's own header. Every entry point checks its arguments and returns an aotml_status;
 * the message for the last failure on the calling thread is `model->last_error()`.
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

#define AOTML_ABI_VERSION 1

typedef enum aotml_status {
    AOTML_OK = 0,
    AOTML_ERR_NULL_POINTER = 1,   /* a required pointer is NULL */
    AOTML_ERR_ARG_COUNT = 2,      /* wrong number of inputs or outputs */
    AOTML_ERR_ARG_SIZE = 3,       /* an input or output buffer has the wrong byte size */
    AOTML_ERR_WORKSPACE = 4,      /* workspace too small */
    AOTML_ERR_OVERLAP = 5,        /* an output overlaps an input, another output or the workspace */
    AOTML_ERR_OUT_OF_MEMORY = 6,  /* the generic entry could not allocate a workspace */
    AOTML_ERR_RUNTIME = 7         /* a check inside the model failed (e.g. an index out of
                                     range); the outputs are then unspecified */
} aotml_status;

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
    const int64_t *shape;     /* rank entries */
    uint64_t bytes;           /* dense row-major size */
} aotml_tensor_info;

typedef struct aotml_model {
    uint32_t abi_version;     /* AOTML_ABI_VERSION the model was built for */
    const char *aotml_version;
    const char *name;
    const char *build_hash;   /* sha256 of the source, weights, flags and compiler version */
    uint32_t n_inputs;
    const aotml_tensor_info *inputs;
    uint32_t n_outputs;
    const aotml_tensor_info *outputs;
    uint64_t workspace_bytes; /* scratch the run needs; 64-byte alignment is best */
    uint64_t weights_bytes;
    /* Runs the model. input_bytes/output_bytes give each buffer's size and are checked against
     * the manifest. `workspace` may be NULL with workspace_bytes 0: the call then allocates and
     * frees one itself (the typed entry never allocates). */
    int (*run)(const void *const *inputs, const uint64_t *input_bytes, uint32_t n_inputs,
               void *const *outputs, const uint64_t *output_bytes, uint32_t n_outputs,
               void *workspace, uint64_t workspace_bytes);
    /* The message of the last failed call on this thread ("" if none). */
    const char *(*last_error)(void);
} aotml_model;

#ifdef __cplusplus
}
#endif

#endif /* AOTML_H */
