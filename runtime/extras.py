"""Which optional extra a command needs, and the one line that says how to install it.

The runtime needs nothing beyond its dependencies; ``python -m export`` and the
``training.*`` commands need PyTorch and friends, installed as the ``[export]`` and
``[train]`` extras (pyproject.toml). Run without them, a command says so in one line and
exits 2, instead of ending in an import traceback. Modules are looked up, not imported, so
the check costs nothing. Torch-free, like everything in ``runtime``.
"""
from __future__ import annotations

import importlib.util
import sys

# The modules each extra's packages provide (pyproject.toml's lists; a test keeps them equal).
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("torch", "scipy", "tqdm", "matplotlib"),
    "export": ("torch", "onnx", "onnxscript", "scipy", "tqdm"),
}
EXIT_BAD_USAGE = 2


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_modules(*extras: str) -> list[str]:
    """The modules of ``extras`` that are not installed, in order, without duplicates."""
    wanted = dict.fromkeys(m for e in extras for m in EXTRAS[e])
    return [m for m in wanted if not _installed(m)]


def exit_unless_installed(prog: str, *extras: str) -> None:
    """Return when the extras' modules are installed; else one line on stderr and exit 2."""
    missing = missing_modules(*extras)
    if missing:
        names = ",".join(extras)
        what = "extra" if len(extras) == 1 else "extras"
        sys.stderr.write(f"{prog}: needs the [{names}] {what} (missing: {', '.join(missing)}); install with: "
                         f"pip install -e \".[{names}]\"\n")
        raise SystemExit(EXIT_BAD_USAGE)


__all__ = ["EXTRAS", "missing_modules", "exit_unless_installed"]
