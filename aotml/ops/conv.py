"""Convolution, pooling (NCHW) and attention."""
