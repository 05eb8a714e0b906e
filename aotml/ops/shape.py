"""Shape and data-movement ops: reshape, transpose, broadcast_to, concat, slice, gather, pad,
squeeze, unsqueeze."""
