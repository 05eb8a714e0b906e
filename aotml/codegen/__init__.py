"""Code generation, one module per target behind the small interface in `target.py`."""
