"""What seed import refuses: one error type for the importer and the Lightning path."""
from __future__ import annotations

from tce_backends.errors import BundleError


class SeedImportError(BundleError):
    """A seed artifact is missing, unknown or malformed."""
