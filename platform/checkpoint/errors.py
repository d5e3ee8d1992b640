"""Errors a restore raises when nothing usable exists; both name the directory."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """Base class: something is wrong with a checkpoint directory."""


class CheckpointNotFound(CheckpointError):
    """The directory, or the requested step in it, holds no complete checkpoint."""


class CheckpointCorrupt(CheckpointError):
    """Every candidate checkpoint is damaged; the message lists the damaged files."""
