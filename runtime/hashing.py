"""sha256 of a file, streamed: the one implementation the runtime, the export and training share.

Bundles list each graph's sha256, libraries each segment file's and each track's content
hash, checkpoints are named by theirs; graphs and tracks are hundreds of MB, so files are
read in blocks, never whole.
"""
from __future__ import annotations

import hashlib
import os

BLOCK_BYTES = 1 << 20


def sha256_file(path: str | os.PathLike, chunk: int = BLOCK_BYTES) -> str:
    """Hex sha256 of a file's bytes, read ``chunk`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


__all__ = ["sha256_file", "BLOCK_BYTES"]
