/* The runtime linked into every model library: argument checks at the ABI boundary, thread-local
 * error messages, and the workspace for callers of the generic entry that pass none. */
#include "aotml_runtime.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static _Thread_local char last_error[512];

static int fail(int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

AOTML_HIDDEN const char *aotml_rt_last_error(void) { return last_error; }

typedef struct span { uintptr_t lo, hi; const char *what; const char *name; } span;

static int overlaps(const span *a, const span *b) { return a->lo < b->hi && b->lo < a->hi; }

static int check_tensors(const char *kind, const aotml_tensor_info *info, uint32_t expected,
                         const void *const *ptrs, const uint64_t *bytes, uint32_t given) {
    if (given != expected)
        return fail(AOTML_ERR_ARG_COUNT, "expected %u %ss, got %u", expected, kind, given);
    if (expected == 0) return AOTML_OK;
    if (!ptrs) return fail(AOTML_ERR_NULL_POINTER, "the %s pointer array is NULL", kind);
    if (!bytes) return fail(AOTML_ERR_NULL_POINTER, "the %s byte-size array is NULL", kind);
    for (uint32_t i = 0; i < expected; i++) {
        if (!ptrs[i])
            return fail(AOTML_ERR_NULL_POINTER, "%s %u ('%s') is NULL", kind, i, info[i].name);
        if (bytes[i] != info[i].bytes)
            return fail(AOTML_ERR_ARG_SIZE, "%s %u ('%s') has %llu bytes, expected %llu",
                        kind, i, info[i].name, (unsigned long long)bytes[i],
                        (unsigned long long)info[i].bytes);
    }
    return AOTML_OK;
}

/* Outputs are written while inputs are still read, so no output may share bytes with an input,
 * another output, or the workspace; inputs may alias each other. */
static int check_overlap(const aotml_model *m, const void *const *inputs,
                         void *const *outputs, const void *workspace, uint64_t ws_bytes) {
    for (uint32_t o = 0; o < m->n_outputs; o++) {
        span out = {(uintptr_t)outputs[o], (uintptr_t)outputs[o] + m->outputs[o].bytes,
                    "output", m->outputs[o].name};
        for (uint32_t i = 0; i < m->n_inputs; i++) {
            span in = {(uintptr_t)inputs[i], (uintptr_t)inputs[i] + m->inputs[i].bytes,
                       "input", m->inputs[i].name};
            if (overlaps(&out, &in))
                return fail(AOTML_ERR_OVERLAP, "output '%s' overlaps input '%s'", out.name,
                            in.name);
        }
        for (uint32_t p = 0; p < o; p++) {
            span other = {(uintptr_t)outputs[p], (uintptr_t)outputs[p] + m->outputs[p].bytes,
                          "output", m->outputs[p].name};
            if (overlaps(&out, &other))
                return fail(AOTML_ERR_OVERLAP, "output '%s' overlaps output '%s'", out.name,
                            other.name);
        }
        if (workspace && ws_bytes) {
            span ws = {(uintptr_t)workspace, (uintptr_t)workspace + ws_bytes, "workspace", ""};
            if (overlaps(&out, &ws))
                return fail(AOTML_ERR_OVERLAP, "output '%s' overlaps the workspace", out.name);
        }
    }
    return AOTML_OK;
}

AOTML_HIDDEN int aotml_rt_run(const aotml_impl *impl, const void *const *inputs,
                              const uint64_t *input_bytes, uint32_t n_inputs,
                              void *const *outputs, const uint64_t *output_bytes,
                              uint32_t n_outputs, void *workspace, uint64_t workspace_bytes) {
    const aotml_model *m = impl->model;
    int rc = check_tensors("input", m->inputs, m->n_inputs, inputs, input_bytes, n_inputs);
    if (rc) return rc;
    rc = check_tensors("output", m->outputs, m->n_outputs, (const void *const *)outputs,
                       output_bytes, n_outputs);
    if (rc) return rc;
    void *owned = NULL;
    if (m->workspace_bytes > 0) {
        if (!workspace && workspace_bytes == 0) {
            /* round up: aligned_alloc wants a multiple of the alignment */
            size_t size = (size_t)((m->workspace_bytes + 63) / 64 * 64);
            owned = workspace = aligned_alloc(64, size);
            workspace_bytes = m->workspace_bytes;
            if (!owned)
                return fail(AOTML_ERR_OUT_OF_MEMORY, "cannot allocate a workspace of %llu bytes",
                            (unsigned long long)m->workspace_bytes);
        } else if (!workspace) {
            return fail(AOTML_ERR_NULL_POINTER, "workspace is NULL (it needs %llu bytes)",
                        (unsigned long long)m->workspace_bytes);
        } else if (workspace_bytes < m->workspace_bytes) {
            return fail(AOTML_ERR_WORKSPACE, "workspace has %llu bytes, the model needs %llu",
                        (unsigned long long)workspace_bytes,
                        (unsigned long long)m->workspace_bytes);
        }
    }
    rc = check_overlap(m, inputs, outputs, workspace, m->workspace_bytes);
    if (rc == AOTML_OK) {
        int check = impl->entry(inputs, outputs, workspace, impl->weights);
        if (check == 0)
            last_error[0] = '\0';
        else if (check > 0 && (uint32_t)check <= impl->n_errors)
            rc = fail(AOTML_ERR_RUNTIME, "%s", impl->errors[check - 1]);
        else
            rc = fail(AOTML_ERR_RUNTIME, "run-time check %d failed", check);
    }
    free(owned);
    return rc;
}
