"""Keep an imported model as `.mlg` source with its weights beside it (`.safetensors`)."""

from __future__ import annotations

from pathlib import Path

from aotml.graph.ir import Graph
from aotml.graph.to_source import to_mlg
from aotml.package.artifact import write_atomically


def write_mlg(graph: Graph, out: str | Path, source_name: str) -> tuple[Path, Path | None]:
    """Write `out` (.mlg) and, when the graph has params, `out` with suffix .safetensors;
    both atomically. Returns their paths."""
    from safetensors.numpy import save

    out = Path(out)
    weights = out.with_suffix(".safetensors") if graph.params else None
    text = to_mlg(graph, weights.name if weights else None,
                  header=[f"imported from {source_name} by aotml import"])
    files: dict[Path, bytes] = {}
    if weights is not None:
        arrays = {p.value.name: p.data for p in graph.params}
        files[weights] = save(arrays)
    files[out] = text.encode()
    write_atomically(files)
    return out, weights
