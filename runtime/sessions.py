"""ONNX Runtime sessions on the device the caller names, and honest about what they got.

The caller says ``auto``, ``cpu`` or ``cuda``. ORT quietly runs on the CPU when the CUDA
provider cannot start (no GPU, missing CUDA libraries), so after creating a session we read
``get_providers()`` and say so, once, when CUDA was asked for and is not in use. Only the
intra-op thread count is exposed: arbitrary session options would make results and
timings depend on settings nobody recorded.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import BundleError, InputError

DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

log = logging.getLogger("manga_music")
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def _ort():
    # Imported on first use so `import runtime` stays cheap for code that only reads libraries.
    import onnxruntime as ort

    return ort


def cuda_available() -> bool:
    """True when the installed onnxruntime was built with the CUDA provider (onnxruntime-gpu)."""
    return CUDA in _ort().get_available_providers()


@dataclass(frozen=True)
class DeviceChoice:
    """The device a session should use, resolved from what the caller asked for."""

    requested: str  # "auto" | "cpu" | "cuda"
    device: str  # "cpu" | "cuda": what we will ask ORT for

    @property
    def providers(self) -> list[str]:
        return [CUDA, CPU] if self.device == "cuda" else [CPU]


def resolve_device(device: str = "auto", strict: bool = False) -> DeviceChoice:
    """``auto`` -> CUDA if the provider is installed, else CPU; ``cuda`` without the provider
    -> a warning and CPU, or ``InputError`` when ``strict``."""
    if device not in DEVICES:
        raise InputError(f"unknown device {device!r} (choose from {', '.join(DEVICES)})")
    if device == "cpu":
        return DeviceChoice(device, "cpu")
    have_cuda = cuda_available()
    if device == "auto":
        return DeviceChoice(device, "cuda" if have_cuda else "cpu")
    if not have_cuda:
        msg = ("CUDA was requested but this onnxruntime has no CUDA provider "
               "(install onnxruntime-gpu in place of onnxruntime); running on the CPU")
        if strict:
            raise InputError(msg.replace("; running on the CPU", ""))
        _warn_once(msg)
        return DeviceChoice(device, "cpu")
    return DeviceChoice(device, "cuda")


def session_options(threads: int | None):
    """The only knobs we set: intra-op threads, and ORT's own log level (errors only, so
    its C++ warnings do not break the one-line-on-stderr rule)."""
    ort = _ort()
    so = ort.SessionOptions()
    if threads is not None:
        if int(threads) < 1:
            raise InputError(f"threads must be >= 1, got {threads}")
        so.intra_op_num_threads = int(threads)
        # One model runs at a time per session; inter-op parallelism only adds threads.
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def make_session(path: str | Path, device: str = "auto", threads: int | None = None,
                 strict: bool = False):
    """Create an ``onnxruntime.InferenceSession`` for ``path``.

    Returns ``(session, provider_used)`` where ``provider_used`` is "cuda" or "cpu", read
    back from the session rather than assumed. Raises ``BundleError`` when ORT cannot load
    the file and ``InputError`` for a bad device/thread request.
    """
    choice = resolve_device(device, strict=strict)
    ort = _ort()
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # ORT's Python warning about an unavailable provider: we check and say it ourselves.
            warnings.simplefilter("ignore", UserWarning)
            sess = ort.InferenceSession(str(path), sess_options=session_options(threads),
                                        providers=choice.providers)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for bad graphs
        raise BundleError(f"{path}: onnxruntime cannot load this graph ({_first_line(exc)})") from None
    used = "cuda" if CUDA in sess.get_providers() else "cpu"
    if choice.device == "cuda" and used != "cuda":
        msg = f"CUDA provider failed to start for {path.name}; running on the CPU"
        if strict:
            raise InputError(msg.replace("; running on the CPU", ""))
        _warn_once(msg)
    return sess, used


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
