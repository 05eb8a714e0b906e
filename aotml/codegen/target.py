"""What every target provides: its capabilities, and the emission of a loop-IR program."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from aotml.loops.ir import Program


@dataclass(frozen=True)
class Capabilities:
    """What a target offers the schedule: vector width in bits, threads, shared memory."""

    vector_bits: int
    threads: bool = False
    shared_memory_bytes: int = 0


@dataclass(frozen=True)
class Emitted:
    """A target's output for one program: an object file, plus text for each dump stage."""

    object_code: bytes
    dumps: dict[str, str]


class Target(Protocol):
    name: str

    @property
    def capabilities(self) -> Capabilities: ...

    def describe(self) -> str:
        """A stable description (triple, cpu, features) that goes into the build hash."""
        ...

    def emit(self, program: Program, dump: frozenset[str] = frozenset()) -> Emitted: ...
