/* Internal to a model library: what the generated glue and the runtime share. Not installed. */
#ifndef AOTML_RUNTIME_H
#define AOTML_RUNTIME_H

#include "aotml.h"

#define AOTML_HIDDEN __attribute__((visibility("hidden")))
#define AOTML_EXPORT __attribute__((visibility("default")))

/* The compiled kernels' entry: buffer tables in manifest order, workspace, weights blob.
 * Returns 0, or k > 0 when the run-time check whose message is errors[k - 1] failed. */
typedef int (*aotml_entry_fn)(const void *const *inputs, void *const *outputs,
                              void *workspace, const void *weights);

typedef struct aotml_impl {
    const aotml_model *model;
    aotml_entry_fn entry;
    const void *weights;
    const char *const *errors;
    uint32_t n_errors;
} aotml_impl;

AOTML_HIDDEN int aotml_rt_run(const aotml_impl *impl, const void *const *inputs,
                              const uint64_t *input_bytes, uint32_t n_inputs,
                              void *const *outputs, const uint64_t *output_bytes,
                              uint32_t n_outputs, void *workspace, uint64_t workspace_bytes);
AOTML_HIDDEN const char *aotml_rt_last_error(void);

#endif
