"""The accelerator lowering: loop-IR kernels mapped onto a GPU's blocks and threads."""
