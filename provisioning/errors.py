"""The provisioning CLI's one error type: the operator's to fix, printed as one line."""

from __future__ import annotations


class ProvisionError(Exception):
    """A command refused its input or could not reach what it needs; nothing was written."""
