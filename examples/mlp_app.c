/* Links the compiled MLP (build/mlp.so + build/mlp.h) and prints the top class.
 *
 *   cc -O2 -std=c11 -Ibuild examples/mlp_app.c build/mlp.so -Wl,-rpath,'$ORIGIN' -o build/mlp_app
 *   ./build/mlp_app
 *
 * The input is the one examples/make_mlp_weights.py:example_input() builds, so the class printed
 * here can be compared with the Python run. */
#include <stdio.h>
#include <stdlib.h>

#include "mlp.h"

/* The batch size N is a symbolic dim of the model (at most MLP_N_MAX): it is passed first to
 * mlp_run, and the _ELEMENTS macros take it. */
enum { BATCH = 1 };

int main(void) {
    static float x[MLP_x_ELEMENTS(BATCH)];
    static float probs[MLP_probs_ELEMENTS(BATCH)];
    for (unsigned i = 0; i < MLP_x_ELEMENTS(BATCH); i++)
        x[i] = (float)((i * 37u) % 101u) / 100.0f;

    /* The caller owns the workspace: the typed entry never allocates. With N bounded, its
     * size is one constant that serves every batch up to MLP_N_MAX. */
    void *workspace = aligned_alloc(64, (MLP_WORKSPACE_BYTES + 63) / 64 * 64);
    if (!workspace) return 1;
    int rc = mlp_run(BATCH, x, probs, workspace);
    free(workspace);
    if (rc != AOTML_OK) {
        fprintf(stderr, "mlp_run failed (%d): %s\n", rc, mlp_last_error());
        return 1;
    }
    unsigned best = 0;
    for (unsigned k = 1; k < MLP_probs_ELEMENTS(BATCH); k++)
        if (probs[k] > probs[best]) best = k;
    const aotml_model *m = mlp_model();
    printf("c: model %s (aotml %s, workspace %llu bytes)\n", m->name, m->aotml_version,
           (unsigned long long)m->workspace_bytes);
    printf("c: top class %u (p = %.6f)\n", best, probs[best]);
    return 0;
}
