#!/usr/bin/env bash
# Build examples/mlp.mlg, run it from Python and from C, and check both print the same class.
set -euo pipefail
cd "$(dirname "$0")/.."
python examples/make_weights.py
aotml build examples/mlp.mlg -o build/mlp.so
python examples/mlp_run.py build/mlp.so | tee build/python.txt
cc -O2 -std=c11 -Ibuild examples/mlp_app.c build/mlp.so -Wl,-rpath,'$ORIGIN' -o build/mlp_app
./build/mlp_app | tee build/c.txt
py=$(grep -o 'top class [0-9]*' build/python.txt)
c=$(grep -o 'top class [0-9]*' build/c.txt)
if [ "$py" != "$c" ]; then echo "Python ($py) and C ($c) disagree" >&2; exit 1; fi
echo "ok: Python and C agree on the $py"
