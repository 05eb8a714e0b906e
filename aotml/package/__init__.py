"""Packaging: a loop-IR program's object code, weights and manifest into one `.so` and a `.h`."""
