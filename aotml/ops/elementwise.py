"""Elementwise ops beyond the core arithmetic: math functions, activations, comparisons, where."""
