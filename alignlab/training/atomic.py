"""Files a kill cannot leave half-written."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write` a temporary sibling of `path`, then rename it over `path`: a reader sees old or new, never half.
    A failed write (a full disk, say) leaves `path` as it was and no temporary file behind."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
