/* The runtime linked into every model library: argument checks at the ABI boundary (counts,
 * NULLs, byte sizes, overlaps, and the symbols' values and the shapes they imply), thread-local
 * error messages, the workspace for callers of the generic entry that pass none, and the
 * thread pool that runs the kernels' parallel loops. */
#define _GNU_SOURCE /* sched_getaffinity */
#include "aotml_runtime.h"

#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* No size may exceed this: every index the kernels compute then fits in an int64. */
#define MAX_BYTES ((uint64_t)1 << 62)

static _Thread_local char last_error[512];

AOTML_HIDDEN int aotml_rt_fail(int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}
#define fail aotml_rt_fail

AOTML_HIDDEN const char *aotml_rt_last_error(void) { return last_error; }

/* Evaluates the polynomial at *p and moves *p past it. Returns 0 when the value exceeds
 * MAX_BYTES (or a step overflows). */
AOTML_HIDDEN int aotml_rt_eval_poly(const int64_t **p, const int64_t *symbols, uint64_t *out) {
    const int64_t *q = *p;
    int64_t n_terms = *q++;
    uint64_t total = 0;
    int ok = 1;
    for (int64_t t = 0; t < n_terms; t++) {
        uint64_t term = (uint64_t)*q++;
        int64_t degree = *q++;
        for (int64_t k = 0; k < degree; k++)
            ok &= !__builtin_mul_overflow(term, (uint64_t)symbols[*q++], &term);
        ok &= !__builtin_add_overflow(total, term, &total);
    }
    *p = q;
    *out = total;
    return ok && total <= MAX_BYTES;
}
#define eval_poly aotml_rt_eval_poly

static const aotml_tensor_info *tensor(const aotml_model *m, uint32_t index, const char **kind) {
    *kind = index < m->n_inputs ? "input" : "output";
    return index < m->n_inputs ? &m->inputs[index] : &m->outputs[index - m->n_inputs];
}

static int describe_symbols(const aotml_model *m, const int64_t *symbols, char *buf, size_t n) {
    size_t used = 0;
    buf[0] = '\0';
    for (uint32_t s = 0; s < m->n_symbols && used < n; s++)
        used += (size_t)snprintf(buf + used, n - used, "%s%s = %lld", s ? ", " : "",
                                 m->symbols[s].name, (long long)symbols[s]);
    return 0;
}

/* The symbols' values are in range and every size they give fits. */
AOTML_HIDDEN int aotml_rt_check_symbols(const aotml_impl *impl, const int64_t *symbols) {
    const aotml_model *m = impl->model;
    if (m->n_symbols == 0) return AOTML_OK;
    if (!symbols) return fail(AOTML_ERR_NULL_POINTER, "the symbol array is NULL");
    for (uint32_t s = 0; s < m->n_symbols; s++) {
        if (symbols[s] < 1)
            return fail(AOTML_ERR_SHAPE, "%s = %lld, but it must be at least 1",
                        m->symbols[s].name, (long long)symbols[s]);
        if (m->symbols[s].max && symbols[s] > m->symbols[s].max)
            return fail(AOTML_ERR_SHAPE, "%s = %lld is above its bound %lld",
                        m->symbols[s].name, (long long)symbols[s],
                        (long long)m->symbols[s].max);
    }
    char values[256];
    uint64_t value;
    for (uint32_t i = 0; i < m->n_inputs + m->n_outputs; i++) {
        const char *kind;
        const aotml_tensor_info *t = tensor(m, i, &kind);
        const int64_t *p = impl->sizes[i];
        for (int32_t k = 0; k <= t->rank; k++) {
            if (!eval_poly(&p, symbols, &value)) {
                describe_symbols(m, symbols, values, sizeof values);
                return fail(AOTML_ERR_SHAPE, "with %s, %s '%s' would be too large", values,
                            kind, t->name);
            }
        }
    }
    const int64_t *p = impl->workspace;
    if (!eval_poly(&p, symbols, &value)) {
        describe_symbols(m, symbols, values, sizeof values);
        return fail(AOTML_ERR_SHAPE, "with %s, the workspace would be too large", values);
    }
    return AOTML_OK;
}

#define check_symbols aotml_rt_check_symbols

AOTML_HIDDEN int aotml_rt_bind(const aotml_impl *impl, const int64_t *const *input_shapes,
                               int64_t *symbols) {
    const aotml_model *m = impl->model;
    if (m->n_inputs && !input_shapes)
        return fail(AOTML_ERR_NULL_POINTER, "the input shape array is NULL");
    if (m->n_symbols && !symbols) return fail(AOTML_ERR_NULL_POINTER, "the symbol array is NULL");
    for (uint32_t s = 0; s < m->n_symbols; s++) symbols[s] = 0;
    for (uint32_t i = 0; i < m->n_inputs; i++) {
        const aotml_tensor_info *t = &m->inputs[i];
        if (t->rank && !input_shapes[i])
            return fail(AOTML_ERR_NULL_POINTER, "the shape of input '%s' is NULL", t->name);
        const int64_t *p = impl->sizes[i];
        for (int32_t k = 0; k < t->rank; k++) {
            int64_t got = input_shapes[i][k];
            /* an input's dim is a constant (1 term of degree 0) or a bare symbol */
            if (p[0] == 1 && p[1] == 1 && p[2] == 1) {
                int64_t s = p[3];
                const char *name = m->symbols[s].name;
                p += 4;
                if (got < 1)
                    return fail(AOTML_ERR_SHAPE, "input '%s' dim %d is %lld, but %s must be at "
                                "least 1", t->name, k, (long long)got, name);
                if (m->symbols[s].max && got > m->symbols[s].max)
                    return fail(AOTML_ERR_SHAPE, "input '%s' dim %d is %lld, above the bound of "
                                "%s (%lld)", t->name, k, (long long)got, name,
                                (long long)m->symbols[s].max);
                if (symbols[s] == 0) {
                    symbols[s] = got;
                } else if (symbols[s] != got) {
                    /* find where it was bound, to name both sides */
                    for (uint32_t j = 0; j <= i; j++) {
                        const int64_t *q = impl->sizes[j];
                        for (int32_t d = 0; d < m->inputs[j].rank; d++) {
                            int bare = q[0] == 1 && q[1] == 1 && q[2] == 1;
                            if (bare && q[3] == s && input_shapes[j][d] == symbols[s])
                                return fail(AOTML_ERR_SHAPE,
                                            "inputs disagree on %s: '%s' dim %d is %lld, but "
                                            "'%s' dim %d is %lld", name, m->inputs[j].name, d,
                                            (long long)symbols[s], t->name, k, (long long)got);
                            q += bare ? 4 : 3 + q[2];
                        }
                    }
                    return fail(AOTML_ERR_SHAPE, "inputs disagree on %s", name);
                }
            } else {
                p += 3 + p[2];
                if (got != t->shape[k])
                    return fail(AOTML_ERR_SHAPE, "input '%s' dim %d is %lld, expected %lld",
                                t->name, k, (long long)got, (long long)t->shape[k]);
            }
        }
    }
    return check_symbols(impl, symbols);
}

AOTML_HIDDEN int aotml_rt_shape(const aotml_impl *impl, const int64_t *symbols, uint32_t index,
                                int64_t *shape, uint64_t *bytes) {
    const aotml_model *m = impl->model;
    if (index >= m->n_inputs + m->n_outputs)
        return fail(AOTML_ERR_ARG_COUNT, "no tensor %u (the model has %u inputs and %u outputs)",
                    index, m->n_inputs, m->n_outputs);
    int rc = check_symbols(impl, symbols);
    if (rc) return rc;
    const char *kind;
    const aotml_tensor_info *t = tensor(m, index, &kind);
    if ((t->rank && !shape) || !bytes)
        return fail(AOTML_ERR_NULL_POINTER, "the shape or bytes pointer is NULL");
    const int64_t *p = impl->sizes[index];
    uint64_t value;
    for (int32_t k = 0; k < t->rank; k++) {
        eval_poly(&p, symbols, &value);
        shape[k] = (int64_t)value;
    }
    eval_poly(&p, symbols, bytes);
    return AOTML_OK;
}

AOTML_HIDDEN int aotml_rt_workspace_size(const aotml_impl *impl, const int64_t *symbols,
                                         uint64_t *bytes) {
    int rc = check_symbols(impl, symbols);
    if (rc) return rc;
    if (!bytes) return fail(AOTML_ERR_NULL_POINTER, "the bytes pointer is NULL");
    const int64_t *p = impl->workspace;
    eval_poly(&p, symbols, bytes);
    return AOTML_OK;
}

AOTML_HIDDEN int aotml_rt_profile_work(const aotml_impl *impl, uint32_t n,
                                       const int64_t *flops_polys, const int64_t *bytes_polys,
                                       const int64_t *symbols, uint64_t *flops,
                                       uint64_t *bytes) {
    int rc = check_symbols(impl, symbols);
    if (rc) return rc;
    if (!flops || !bytes) return fail(AOTML_ERR_NULL_POINTER, "the flops or bytes array is NULL");
    for (uint32_t k = 0; k < n; k++) {
        if (!eval_poly(&flops_polys, symbols, &flops[k]) ||
            !eval_poly(&bytes_polys, symbols, &bytes[k]))
            return fail(AOTML_ERR_SHAPE, "kernel %u's work does not fit in 62 bits", k);
    }
    return AOTML_OK;
}

AOTML_HIDDEN uint64_t aotml_rt_tensor_bytes(const aotml_impl *impl, const int64_t *symbols,
                                            uint32_t index) {
    const char *kind;
    const aotml_tensor_info *t = tensor(impl->model, index, &kind);
    if (impl->model->n_symbols == 0) return t->bytes;
    const int64_t *p = impl->sizes[index];
    uint64_t value = 0;
    for (int32_t k = 0; k <= t->rank; k++) eval_poly(&p, symbols, &value);
    return value;
}
#define tensor_bytes aotml_rt_tensor_bytes

static int check_tensors(const aotml_impl *impl, const int64_t *symbols, int outputs,
                         const void *const *ptrs, const uint64_t *bytes, uint32_t given,
                         int typed) {
    const aotml_model *m = impl->model;
    const char *kind = outputs ? "output" : "input";
    const aotml_tensor_info *info = outputs ? m->outputs : m->inputs;
    uint32_t expected = outputs ? m->n_outputs : m->n_inputs;
    if (given != expected)
        return fail(AOTML_ERR_ARG_COUNT, "expected %u %ss, got %u", expected, kind, given);
    if (expected == 0) return AOTML_OK;
    if (!ptrs) return fail(AOTML_ERR_NULL_POINTER, "the %s pointer array is NULL", kind);
    if (!typed && !bytes)
        return fail(AOTML_ERR_NULL_POINTER, "the %s byte-size array is NULL", kind);
    for (uint32_t i = 0; i < expected; i++) {
        if (!ptrs[i])
            return fail(AOTML_ERR_NULL_POINTER, "%s %u ('%s') is NULL", kind, i, info[i].name);
        uint64_t want = tensor_bytes(impl, symbols, (outputs ? m->n_inputs : 0) + i);
        if (!typed && bytes[i] != want)
            return fail(AOTML_ERR_ARG_SIZE, "%s %u ('%s') has %llu bytes, expected %llu",
                        kind, i, info[i].name, (unsigned long long)bytes[i],
                        (unsigned long long)want);
    }
    return AOTML_OK;
}

typedef struct span { uintptr_t lo, hi; const char *name; } span;

static int overlaps(const span *a, const span *b) { return a->lo < b->hi && b->lo < a->hi; }

static span span_of(const aotml_impl *impl, const int64_t *symbols, uint32_t index,
                    const void *ptr) {
    const char *kind;
    const aotml_tensor_info *t = tensor(impl->model, index, &kind);
    uintptr_t lo = (uintptr_t)ptr;
    return (span){lo, lo + tensor_bytes(impl, symbols, index), t->name};
}

/* Outputs are written while inputs are still read, so no output may share bytes with an input,
 * another output, or the workspace; inputs may alias each other. */
static int check_overlap(const aotml_impl *impl, const int64_t *symbols,
                         const void *const *inputs, void *const *outputs,
                         const void *workspace, uint64_t ws_bytes) {
    const aotml_model *m = impl->model;
    for (uint32_t o = 0; o < m->n_outputs; o++) {
        span out = span_of(impl, symbols, m->n_inputs + o, outputs[o]);
        for (uint32_t i = 0; i < m->n_inputs; i++) {
            span in = span_of(impl, symbols, i, inputs[i]);
            if (overlaps(&out, &in))
                return fail(AOTML_ERR_OVERLAP, "output '%s' overlaps input '%s'", out.name,
                            in.name);
        }
        for (uint32_t p = 0; p < o; p++) {
            span other = span_of(impl, symbols, m->n_inputs + p, outputs[p]);
            if (overlaps(&out, &other))
                return fail(AOTML_ERR_OVERLAP, "output '%s' overlaps output '%s'", out.name,
                            other.name);
        }
        if (workspace && ws_bytes) {
            span ws = {(uintptr_t)workspace, (uintptr_t)workspace + ws_bytes, ""};
            if (overlaps(&out, &ws))
                return fail(AOTML_ERR_OVERLAP, "output '%s' overlaps the workspace", out.name);
        }
    }
    return AOTML_OK;
}

AOTML_HIDDEN int aotml_rt_run_status(const aotml_impl *impl, int check) {
    if (check < 0) return -check; /* a device error, its message already set */
    if (check == 0) {
        last_error[0] = '\0';
        return AOTML_OK;
    }
    if ((uint32_t)check <= impl->n_errors)
        return fail(AOTML_ERR_RUNTIME, "%s", impl->errors[check - 1]);
    return fail(AOTML_ERR_RUNTIME, "run-time check %d failed", check);
}

static int run(const aotml_impl *impl, const int64_t *symbols, const void *const *inputs,
               const uint64_t *input_bytes, uint32_t n_inputs, void *const *outputs,
               const uint64_t *output_bytes, uint32_t n_outputs, void *workspace,
               uint64_t workspace_bytes, int typed) {
    const aotml_model *m = impl->model;
    int rc = check_symbols(impl, symbols);
    if (rc) return rc;
    rc = check_tensors(impl, symbols, 0, inputs, input_bytes, n_inputs, typed);
    if (rc) return rc;
    rc = check_tensors(impl, symbols, 1, (const void *const *)outputs, output_bytes, n_outputs,
                       typed);
    if (rc) return rc;
    uint64_t needed;
    const int64_t *p = impl->workspace;
    eval_poly(&p, symbols, &needed);
    if (typed) workspace_bytes = needed;
    void *owned = NULL;
    if (needed > 0) {
        if (!workspace && workspace_bytes == 0) {
            /* round up: aligned_alloc wants a multiple of the alignment */
            owned = workspace = aligned_alloc(64, (size_t)((needed + 63) / 64 * 64));
            workspace_bytes = needed;
            if (!owned)
                return fail(AOTML_ERR_OUT_OF_MEMORY, "cannot allocate a workspace of %llu bytes",
                            (unsigned long long)needed);
        } else if (!workspace) {
            return fail(AOTML_ERR_NULL_POINTER, "workspace is NULL (it needs %llu bytes)",
                        (unsigned long long)needed);
        } else if (workspace_bytes < needed) {
            return fail(AOTML_ERR_WORKSPACE, "workspace has %llu bytes, the model needs %llu",
                        (unsigned long long)workspace_bytes, (unsigned long long)needed);
        }
    }
    rc = check_overlap(impl, symbols, inputs, outputs, workspace, needed);
    if (rc == AOTML_OK) {
        int check = AOTML_GPU_DECLINED;
        if (impl->gpu_run) check = impl->gpu_run(impl, symbols, inputs, outputs);
        if (check == AOTML_GPU_DECLINED)
            check = impl->entry(inputs, outputs, workspace, impl->weights, symbols);
        rc = aotml_rt_run_status(impl, check);
    }
    (void)m;
    free(owned);
    return rc;
}

AOTML_HIDDEN int aotml_rt_cpu_select_device(const char *name) {
    if (!name) return fail(AOTML_ERR_NULL_POINTER, "the device name is NULL");
    if (strcmp(name, "cpu") == 0 || strcmp(name, "auto") == 0) return AOTML_OK;
    if (strncmp(name, "cuda", 4) == 0)
        return fail(AOTML_ERR_DEVICE, "this library has no GPU code (it was built for the CPU "
                    "only); rebuild it with --target cpu,cuda to run on '%s'", name);
    return fail(AOTML_ERR_DEVICE, "unknown device '%s'; known: auto, cpu, cuda, cuda:N", name);
}

AOTML_HIDDEN const char *aotml_rt_cpu_device(void) { return "cpu"; }

AOTML_HIDDEN int aotml_rt_cpu_run_device(const int64_t *symbols, const uint64_t *inputs,
                                         const uint64_t *outputs) {
    (void)symbols, (void)inputs, (void)outputs;
    return fail(AOTML_ERR_DEVICE, "this library has no GPU code (it was built for the CPU "
                "only); rebuild it with --target cpu,cuda to run on device memory");
}

AOTML_HIDDEN int aotml_rt_run(const aotml_impl *impl, const int64_t *symbols,
                              const void *const *inputs, const uint64_t *input_bytes,
                              uint32_t n_inputs, void *const *outputs,
                              const uint64_t *output_bytes, uint32_t n_outputs, void *workspace,
                              uint64_t workspace_bytes) {
    return run(impl, symbols, inputs, input_bytes, n_inputs, outputs, output_bytes, n_outputs,
               workspace, workspace_bytes, 0);
}

AOTML_HIDDEN int aotml_rt_run_args(const aotml_impl *impl, const aotml_run_args *a) {
    if (!a) return fail(AOTML_ERR_NULL_POINTER, "the run's argument record is NULL");
    return run(impl, a->symbols, a->inputs, a->input_bytes, a->n_inputs, a->outputs,
               a->output_bytes, a->n_outputs, a->workspace, a->workspace_bytes, 0);
}

AOTML_HIDDEN int aotml_rt_run_typed(const aotml_impl *impl, const int64_t *symbols,
                                    const void *const *inputs, void *const *outputs,
                                    void *workspace) {
    const aotml_model *m = impl->model;
    return run(impl, symbols, inputs, NULL, m->n_inputs, outputs, NULL, m->n_outputs,
               workspace, 0, 1);
}

/* ------------------------------------------------------------------------------------------
 * The thread pool.
 *
 * One pool per process, started on the first parallel loop: `size` - 1 workers plus the
 * calling thread. Every model library carries this code, but its entry points
 * (aotml_pool1_*) are the only interposable symbols a library exports (the link gives the
 * rest local binding), so when libraries share the global symbol scope (C programs that link
 * them; Python loads them RTLD_GLOBAL) the dynamic linker binds every library's calls to the
 * first one loaded, and its pool serves them all. The `1` is the version of this contract:
 * a change to what these functions mean or take gets a new name, so libraries from different
 * aotml versions then keep pools of their own rather than call each other wrongly. A library
 * whose calls went to another keeps that one loaded (the linker records the dependency), and
 * a library unloaded with its workers started stops them first. A parallel loop over [0, extent) is cut into contiguous ranges of at least
 * `grain` iterations, up to RANGES_PER_THREAD for each of the threads taking part: thread t
 * (the caller is 0) owns the t-th block of them and runs it in order, so consecutive loops
 * split alike and a thread finds in its own cache what it wrote before. A thread done with
 * its block takes the ranges nobody has claimed yet from the other blocks, last first: a
 * thread the OS has descheduled (another process on its core) then delays the loop by the
 * range it is running at most, not by its whole block. Each range is claimed by one
 * compare-and-swap of its slot from the job's generation. The compiler only marks a loop
 * parallel when its iterations write disjoint elements, so the result is the same bit for bit
 * whatever the split and whoever runs each range.
 *
 * No oversubscription: a pool runs one loop at a time. A call that finds it busy (another
 * thread of the application running a model of this library), or that comes from a worker,
 * runs its loop alone on the calling thread. Workers spin briefly for the next loop (the
 * kernels of one run follow each other within microseconds), then sleep on a condition
 * variable. After fork() the child starts with no workers and makes its own on first use. */

#define SPIN_NS 50000 /* how long a waiting thread spins before it sleeps */
#define MAX_THREADS 256
#define RANGES_PER_THREAD 4
#define MAX_RANGES (MAX_THREADS * RANGES_PER_THREAD)

static struct {
    pthread_mutex_t busy;  /* held by the thread running a parallel loop (or resizing) */
    pthread_mutex_t lock;  /* with `wake` and `done`: the sleeping threads' waits only */
    pthread_cond_t wake, done;
    int size;              /* threads a loop may use (caller included); 0: not chosen yet */
    int started;           /* workers running */
    pthread_t workers[MAX_THREADS];
    /* the current job, written by the caller holding `busy` between two increments of the
     * generation (odd while it is written, a seqlock) and read by the workers without a
     * lock: one cache line to cross to them */
    _Atomic(aotml_task_fn) fn;
    _Atomic(void *) ctx;
    _Atomic int64_t extent, chunks, threads; /* chunks: ranges, `threads` blocks of them */
    _Atomic uint64_t generation;
    _Atomic uint64_t remaining; /* ranges of the job not yet finished */
    /* range k is free while its slot holds the job's generation, taken once it holds one more
     * (on lines of their own: not those the idle workers spin on) */
    _Alignas(64) _Atomic uint64_t claim[MAX_RANGES];
    /* who sleeps: workers on `wake`, the caller on `done` (changed under `lock`) */
    _Atomic int sleepers;
    _Atomic int caller_sleeps;
    int status[MAX_RANGES];    /* each range's status, read once `remaining` is 0 */
    uint64_t base_generation;  /* the generation when the workers were started */
    _Atomic int stop;
} pool = {.busy = PTHREAD_MUTEX_INITIALIZER, .lock = PTHREAD_MUTEX_INITIALIZER,
          .wake = PTHREAD_COND_INITIALIZER, .done = PTHREAD_COND_INITIALIZER};

static _Thread_local int in_parallel; /* this thread is running a range of a parallel loop */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

AOTML_HIDDEN uint64_t aotml_rt_clock_ns(void) { return now_ns(); }

/* Spins (reading the clock every 64 pauses) until (*value == target) == want_equal, or until
 * SPIN_NS pass; returns whether the wait ended that way. */
static int spin_until(const _Atomic uint64_t *value, uint64_t target, int want_equal) {
    uint64_t deadline = now_ns() + SPIN_NS;
    for (;;) {
        for (int k = 0; k < 64; k++) {
            if ((atomic_load_explicit(value, memory_order_acquire) == target) == want_equal)
                return 1;
            cpu_relax();
        }
        if (now_ns() > deadline) return 0;
    }
}

static int default_threads(void) {
    const char *env = getenv("AOTML_NUM_THREADS");
    if (env && *env) {
        char *end;
        long n = strtol(env, &end, 10);
        if (*end == '\0' && n >= 1) return n > MAX_THREADS ? MAX_THREADS : (int)n;
    }
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n >= 1) return n > MAX_THREADS ? MAX_THREADS : n;
    }
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > MAX_THREADS ? MAX_THREADS : (int)n;
}

static void range_of(int64_t extent, int64_t chunks, int64_t k, int64_t *begin, int64_t *end) {
    *begin = extent / chunks * k + (k < extent % chunks ? k : extent % chunks);
    *end = *begin + extent / chunks + (k < extent % chunks);
}

/* Thread `self` runs the ranges of job `generation` it can claim: its own block in order,
 * then the others' from their ends. A thread still holding an older job's fields claims
 * nothing (every slot holds a newer generation). */
static void run_ranges(uint64_t generation, aotml_task_fn fn, void *ctx, int64_t extent,
                       int64_t ranges, int64_t threads, int64_t self) {
    int64_t per = ranges / threads;
    for (int64_t step = 0; step < ranges; step++) {
        int64_t k = self * per + step;
        if (step >= per) {
            int64_t s = step - per, victim = (self + 1 + s / per) % threads;
            k = victim * per + per - 1 - s % per;
        }
        uint64_t expected = generation;
        /* a plain read first: a taken range costs no exclusive cache line */
        if (atomic_load_explicit(&pool.claim[k], memory_order_relaxed) != generation ||
            !atomic_compare_exchange_strong(&pool.claim[k], &expected, generation + 1))
            continue;
        int64_t begin, end;
        range_of(extent, ranges, k, &begin, &end);
        pool.status[k] = fn(ctx, begin, end);
        if (atomic_fetch_sub(&pool.remaining, 1) == 1 && atomic_load(&pool.caller_sleeps)) {
            pthread_mutex_lock(&pool.lock);
            pthread_cond_signal(&pool.done);
            pthread_mutex_unlock(&pool.lock);
        }
    }
}

/* Sleeping and waking without a lost wake-up, and without the lock when nobody sleeps: a
 * sleeper counts itself (seq_cst) and then checks its condition under `lock`; a waker
 * changes the condition (seq_cst) and then takes `lock` to signal only if it sees a sleeper.
 * One of the two sees the other's store. */
static void *worker_main(void *arg) {
    int64_t index = (int64_t)(intptr_t)arg;
    uint64_t seen = pool.base_generation; /* a job published before this thread ran is its */
    in_parallel = 1;
    for (;;) {
        if (!spin_until(&pool.generation, seen, 0)) {
            pthread_mutex_lock(&pool.lock);
            atomic_fetch_add(&pool.sleepers, 1);
            while (atomic_load(&pool.generation) == seen && !atomic_load(&pool.stop))
                pthread_cond_wait(&pool.wake, &pool.lock);
            atomic_fetch_sub(&pool.sleepers, 1);
            pthread_mutex_unlock(&pool.lock);
        }
        if (atomic_load(&pool.stop)) return NULL;
        uint64_t generation = atomic_load_explicit(&pool.generation, memory_order_acquire);
        if (generation & 1) { /* the caller is writing the job */
            cpu_relax();
            continue;
        }
        aotml_task_fn fn = atomic_load_explicit(&pool.fn, memory_order_relaxed);
        void *ctx = atomic_load_explicit(&pool.ctx, memory_order_relaxed);
        int64_t extent = atomic_load_explicit(&pool.extent, memory_order_relaxed);
        int64_t chunks = atomic_load_explicit(&pool.chunks, memory_order_relaxed);
        int64_t threads = atomic_load_explicit(&pool.threads, memory_order_relaxed);
        /* A worker with a range holds its job until it finishes it (the caller waits for
         * that before the next), but one without could read a newer job's fields as they
         * are written: the generation is odd while they are, so a changed one means that
         * this copy may be torn, and it is read again. */
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&pool.generation, memory_order_relaxed) != generation) continue;
        seen = generation;
        if (index >= threads) continue;
        run_ranges(generation, fn, ctx, extent, chunks, threads, index);
    }
}

/* With `busy` held: stop and join the workers. */
static void stop_workers(void) {
    atomic_store(&pool.stop, 1);
    pthread_mutex_lock(&pool.lock);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    for (int k = 0; k < pool.started; k++) pthread_join(pool.workers[k], NULL);
    pool.started = 0;
    atomic_store(&pool.stop, 0);
}

/* With `busy` held: the workers for `size` threads, as many as could be started. */
static void start_workers(void) {
    if (pool.size == 0) pool.size = default_threads();
    pool.base_generation = atomic_load(&pool.generation);
    while (pool.started < pool.size - 1) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        int rc = pthread_create(&pool.workers[pool.started], &attr, worker_main,
                                (void *)(intptr_t)(pool.started + 1));
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            pool.size = pool.started + 1; /* run with the threads there are */
            break;
        }
        pool.started++;
    }
}

static void after_fork_in_child(void) {
    /* the workers did not survive the fork; the child starts its own when it needs them */
    pthread_mutex_init(&pool.busy, NULL);
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.done, NULL);
    pool.started = 0;
    atomic_store(&pool.stop, 0);
    atomic_store(&pool.sleepers, 0);
    atomic_store(&pool.caller_sleeps, 0);
    /* a fork between a caller's two increments would leave the generation odd, inverting
     * the seqlock's parity for the child's jobs: round it up */
    uint64_t generation = atomic_load(&pool.generation);
    atomic_store(&pool.generation, generation + (generation & 1));
    atomic_store(&pool.remaining, 0);
}

static pthread_once_t fork_handler_once = PTHREAD_ONCE_INIT;
static void install_fork_handler(void) { pthread_atfork(NULL, NULL, after_fork_in_child); }

AOTML_EXPORT int aotml_pool1_parallel_for(aotml_task_fn fn, void *ctx, int64_t extent,
                                         int64_t grain) {
    if (grain < 1) grain = 1;
    int64_t chunks = extent / grain;
    if (in_parallel || chunks < 2 || pthread_mutex_trylock(&pool.busy) != 0)
        return fn(ctx, 0, extent);
    pthread_once(&fork_handler_once, install_fork_handler);
    if (pool.started < pool.size - 1 || pool.size == 0) start_workers();
    int64_t threads = chunks < pool.size ? chunks : pool.size;
    if (threads < 2) {
        pthread_mutex_unlock(&pool.busy);
        return fn(ctx, 0, extent);
    }
    int64_t per = chunks / threads;
    if (per > RANGES_PER_THREAD) per = RANGES_PER_THREAD;
    chunks = threads * per;
    atomic_fetch_add(&pool.generation, 1); /* odd: the job is being written */
    /* the fields' stores may not become visible before the odd generation (a worker's
     * acquire fence pairs with this; x86's locked add orders them anyway, aarch64's does
     * not) */
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&pool.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&pool.ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&pool.extent, extent, memory_order_relaxed);
    atomic_store_explicit(&pool.chunks, chunks, memory_order_relaxed);
    atomic_store_explicit(&pool.threads, threads, memory_order_relaxed);
    uint64_t generation = atomic_load(&pool.generation) + 1; /* the job's, once published */
    for (int64_t k = 0; k < chunks; k++)
        atomic_store_explicit(&pool.claim[k], generation, memory_order_relaxed);
    atomic_store(&pool.remaining, (uint64_t)chunks);
    atomic_fetch_add(&pool.generation, 1); /* even again: publishes the job */
    if (atomic_load(&pool.sleepers)) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }

    in_parallel = 1;
    run_ranges(generation, fn, ctx, extent, chunks, threads, 0);
    in_parallel = 0;
    if (!spin_until(&pool.remaining, 0, 1)) {
        pthread_mutex_lock(&pool.lock);
        atomic_store(&pool.caller_sleeps, 1);
        while (atomic_load(&pool.remaining)) pthread_cond_wait(&pool.done, &pool.lock);
        atomic_store(&pool.caller_sleeps, 0);
        pthread_mutex_unlock(&pool.lock);
    }
    /* the check that failed first in loop order, as a serial run would report: each range
     * stops at its own first failure, and ranges are in loop order */
    int status = 0;
    for (int64_t k = 0; k < chunks && status == 0; k++) status = pool.status[k];
    pthread_mutex_unlock(&pool.busy);
    return status;
}

AOTML_EXPORT int aotml_pool1_set_num_threads(int n) {
    if (n > MAX_THREADS) n = MAX_THREADS;
    pthread_mutex_lock(&pool.busy);
    stop_workers();
    int size = pool.size = n >= 1 ? n : default_threads();
    pthread_mutex_unlock(&pool.busy);
    return size;
}

AOTML_EXPORT int aotml_pool1_num_threads(void) {
    pthread_mutex_lock(&pool.busy);
    if (pool.size == 0) pool.size = default_threads();
    int n = pool.size;
    pthread_mutex_unlock(&pool.busy);
    return n;
}

/* Through the exported names, so that the process's one pool runs them. */
AOTML_HIDDEN int aotml_rt_parallel_for(aotml_task_fn fn, void *ctx, int64_t extent,
                                       int64_t grain) {
    return aotml_pool1_parallel_for(fn, ctx, extent, grain);
}
AOTML_HIDDEN int aotml_rt_set_num_threads(int n) { return aotml_pool1_set_num_threads(n); }
AOTML_HIDDEN int aotml_rt_num_threads(void) { return aotml_pool1_num_threads(); }

/* A library unloaded (dlclose) must not leave workers running its code. A loop in flight
 * holds `busy`; then the process is exiting under a running model and the workers are left
 * to exit with it. */
__attribute__((destructor)) static void stop_pool_on_unload(void) {
    if (pool.started == 0 || pthread_mutex_trylock(&pool.busy) != 0) return;
    stop_workers();
    pthread_mutex_unlock(&pool.busy);
}
