"""What a start need not redo: each graph file's sha256, and ONNX Runtime's optimised form
of each graph, remembered in the cache folder (``runtime.cache``) between processes.

A full-size bundle's graphs are hundreds of MB: hashing the image graph takes ~0.13 s and
optimising it (QDQ fusion, constant folding, layout) another ~0.16 s, at every start of an
app. Both results are pure functions of things we can key on:

- ``verified/``: a file's sha256, keyed by its path, size, mtime, ctime, inode and device.
  A rewrite changes mtime and ctime (ctime cannot be set back by a user), so a changed file
  is hashed again; a bundle's tamper check keeps its meaning.
- ``optimized/``: the graph as ORT optimised it, keyed by the graph's sha256, the
  onnxruntime version, the CPU's model and int8 features, and the thread-independent
  session settings that change optimisation (ORT's own optimised-model file is valid only
  for the machine and version that wrote it, which is exactly this key). A later session
  loads it with optimisation off. An entry that does not load is dropped and rebuilt.

Only sessions made with our own settings on the CPU provider use the optimised cache: a
caller's own session options or execution providers get the graph as it is.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .cache import read_entry, resolve_cache_dir, write_entry
from .hashing import sha256_file

VERIFIED = "verified"
OPTIMIZED = "optimized"


def _stat_key(path: Path) -> str:
    st = path.stat()
    parts = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def cached_file_sha256(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """sha256 of ``path``, from the cache when the file is provably the one hashed before."""
    path = Path(path)
    key = _stat_key(path)
    entry_path = resolve_cache_dir(cache_dir) / VERIFIED / f"{key}.json"
    entry = read_entry(entry_path)
    if entry is not None and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64:
        return entry["sha256"]
    digest = sha256_file(path)
    write_entry(entry_path, {"sha256": digest, "path": str(path.resolve())})
    return digest


def optimized_path(graph_sha256: str, settings_key: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the optimised form of a graph lives for this machine and onnxruntime."""
    import onnxruntime as ort

    from .cpu import cpu_info

    cpu = cpu_info()
    key = "\n".join((graph_sha256, ort.__version__, cpu.machine, cpu.model, ",".join(cpu.features), settings_key))
    return resolve_cache_dir(cache_dir) / OPTIMIZED / f"{hashlib.sha256(key.encode()).hexdigest()}.onnx"


__all__ = ["cached_file_sha256", "optimized_path", "VERIFIED", "OPTIMIZED"]
