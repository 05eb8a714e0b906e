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

int main(void) {
    static float x[MLP_x_ELEMENTS];
    static float probs[MLP_probs_ELEMENTS];
    for (unsigned i = 0; i < MLP_x_ELEMENTS; i++)
        x[i] = (float)((i * 37u) % 101u) / 100.0f;

    /* The caller owns the workspace: the typed entry never allocates. */
    void *workspace = aligned_alloc(64, (MLP_WORKSPACE_BYTES + 63) / 64 * 64);
    if (!workspace) return 1;
    int rc = mlp_run(x, probs, workspace);
    free(workspace);
    if (rc != AOTML_OK) {
        fprintf(stderr, "mlp_run failed (%d): %s\n", rc, mlp_last_error());
        return 1;
    }
    unsigned best = 0;
    for (unsigned k = 1; k < MLP_probs_ELEMENTS; k++)
        if (probs[k] > probs[best]) best = k;
    const aotml_model *m = mlp_model();
    printf("c: model %s (aotml %s, workspace %llu bytes)\n", m->name, m->aotml_version,
           (unsigned long long)m->workspace_bytes);
    printf("c: top class %u (p = %.6f)\n", best, probs[best]);
    return 0;
}
