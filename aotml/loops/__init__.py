"""Loop IR: buffers, loop nests, loads/stores and scalar expressions; lowering from the graph IR."""
