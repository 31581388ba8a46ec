"""`swapctl diff`, `record`, `replay`, `shadow`: side-by-side equivalence."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add this module's commands to the swapctl group (filled in by its owner)."""
