"""Samples for the ops of aotml/ops/nn.py; see opcheck.py."""

from opcheck import Sample  # noqa: F401

SAMPLES: dict = {}
