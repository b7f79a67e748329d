"""The provisioning CLI's one error root: the operator's to fix, printed as one line. Every
error the CLI raises on purpose derives from ``ProvisionError`` (``VendError``,
``KeyFileError``, ``IdentityError``, ``FieldError``, ``LedgerError``...), so its one
handler in ``provisioning/__main__.py`` reports them all."""

from __future__ import annotations


class ProvisionError(Exception):
    """A command refused its input or could not reach what it needs; nothing was written."""
