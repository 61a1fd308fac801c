"""``tce build``: the repository changes whole or not at all.

The bundle's model is loaded and checked before anything is written (a damaged
``model.pt`` is one line naming it). The repository is then written into a staging copy
of itself (models of anyone else in it survive) and swapped into place
(``tce.lib.staging``), under the repository's lock: a failure or a kill at any point
leaves the repository byte for byte as it was, and a server started on it serves what
it served before.

With a ``sizing`` (``tce build`` passes the host's, ``tce.repository.host_sizing``), the
steps' instance counts are the ones it chose, and ``host_sizing.json`` records them and the
host, for the server image's start-up check; a build without one removes a stale record.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from tce.lib.staging import LOCK_TIMEOUT_S, repository_lock, staged_directory
from tce.models.model_check import check_bundle_model
from tce.repository import builder
from tce.repository.builder import RepositoryOptions
from tce.repository.host_sizing import SIZING_FILE, HostSizing, write_record
from tce_backends.bundle import Bundle
from tce_backends.errors import UsageError


def build(bundle_dir: Path | str, out: Path | str, options: RepositoryOptions | None = None,
          say: Callable[[str], None] = lambda _: None, lock_timeout_s: float = LOCK_TIMEOUT_S,
          sizing: HostSizing | None = None) -> tuple[Bundle, Path]:
    """Check the bundle, then write its repository at ``out`` in one swap (instance counts from
    ``sizing`` when given); returns the bundle and ``out``."""
    options = options or RepositoryOptions()
    if sizing is not None:
        options = options.sized_for(sizing)
    bundle = Bundle.load(bundle_dir)
    check_bundle_model(bundle)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a model repository directory")
    if os.path.ismount(out):
        raise UsageError(f"--out {out} is a mount point, which cannot be swapped whole: build into a directory "
                         "inside it, or elsewhere and copy it there")
    with repository_lock(out, lock_timeout_s, command=f"tce build {bundle.root}"):
        try:
            with staged_directory(out, copy_existing=True) as staging:
                builder.write_repository(bundle, staging, options, say=say)
                if sizing is not None:
                    write_record(staging, sizing)
                else:  # the counts are no longer the recorded host's
                    (staging / SIZING_FILE).unlink(missing_ok=True)
        except OSError as error:  # a full disk, a read-only directory: the repository is as it was
            raise UsageError(f"cannot write {out}: {error.strerror or error} ({error.filename or out}); "
                             "the repository was left as it was") from None
    return bundle, out
