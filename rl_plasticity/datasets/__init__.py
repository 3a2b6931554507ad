"""Image data sets read from local files in their standard formats, plus the embedded MNIST subset."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from rl_plasticity.errors import UserError


@contextlib.contextmanager
def reading(path: str | Path, what: str) -> Iterator[None]:
    """Any failure while a user's data file is read is bad input: one line naming the file and the problem.

    Damaged files fail in many ways (a truncated zip, a bad CRC, a bit-flipped pickle or gzip stream);
    all of them mean the same thing to the user.
    """
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the parser raised, the file is at fault
        lines = str(e).strip().splitlines()
        reason = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
        raise UserError(f"cannot read {what} {path} (damaged or not in the expected format): {reason[:200]}") from None
