"""Contractions, reductions over any axes, and normalizations."""
