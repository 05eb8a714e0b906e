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
typedef struct aotml_impl {
    const aotml_model *model;
    aotml_entry_fn entry;
    const void *weights;
    const char *const *errors;
    uint32_t n_errors;
    /* per tensor (inputs, then outputs): the polynomials of its rank dims, then of its bytes */
    const int64_t *const *sizes;
    const int64_t *workspace;       /* the workspace bytes' polynomial */
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
/* The typed entry: buffers are taken to have the sizes the symbols give. */
AOTML_HIDDEN int aotml_rt_run_typed(const aotml_impl *impl, const int64_t *symbols,
                                    const void *const *inputs, void *const *outputs,
                                    void *workspace);
AOTML_HIDDEN const char *aotml_rt_last_error(void);

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

#endif
