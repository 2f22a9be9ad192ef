"""Progress bars, one style for the whole harness (stderr, so records and reports stay clean on stdout)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, leave: bool = False) -> Iterable[T]:
    """Wrap ``iterable`` in a bar; ``ANOBENCH_PROGRESS=0`` turns bars off (logs of long CI runs)."""
    disabled = os.environ.get("ANOBENCH_PROGRESS", "1") == "0"
    interactive = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, leave=leave, disable=disabled, file=sys.stderr,
                mininterval=0.2 if interactive else 5.0, dynamic_ncols=True)
