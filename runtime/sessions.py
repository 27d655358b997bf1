"""ONNX Runtime sessions on the device the caller names, and honest about what they got.

The caller says ``auto``, ``cpu`` or ``cuda``, or, as an app that knows its platform,
names ONNX Runtime execution providers itself (CoreML, NNAPI, DirectML, OpenVINO, ...)
with their options and its own ``SessionOptions`` (a shared thread pool, say). ORT quietly
runs on the CPU when a provider cannot start (no GPU, missing CUDA libraries), so after
creating a session we read ``get_providers()`` back, report the provider really in use and
say so, once, when it is not the one asked for; ``Encoders`` then picks the precision for
that provider, not for the one it hoped for.

Our defaults suit an app rather than a benchmark: every session of an ``Encoders`` uses the
same intra-op thread count (``default_threads()``: the CPUs this process may run on), one
inter-op thread (one graph runs at a time), and no spin-waiting: ORT's worker threads
otherwise keep a core busy for a while after each run, CPU time an app on a phone or a
laptop pays for in battery and heat (``benchmarks/spinning.py`` measures it). All of it is
one frozen ``SessionSettings``, so what a measurement ran with can be recorded.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import BundleError, InputError, one_line

DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# Providers whose kernels make fp16 the fast path (GPUs); every other provider is given the
# CPU's order (int8 first). See ``bundle.PRECISION_PREFERENCE``.
GPU_PROVIDERS = frozenset({CUDA, "TensorrtExecutionProvider", "ROCMExecutionProvider",
                           "MIGraphXExecutionProvider", "DmlExecutionProvider"})
_SHORT = {CPU: "cpu", CUDA: "cuda"}

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


def default_threads() -> int:
    """The intra-op thread count every session gets unless told otherwise: the CPUs this
    process may run on (its affinity mask, which containers and ``taskset`` narrow; ORT's
    own default counts the whole machine's cores)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def provider_name(provider: Any) -> str:
    """The name of a provider entry as ORT takes them: a name, or a (name, options) pair."""
    return provider[0] if isinstance(provider, (tuple, list)) else str(provider)


def short_provider(name: str) -> str:
    """How results and messages name a provider: "cpu", "cuda", else ORT's own name."""
    return _SHORT.get(name, name)


def precision_device(provider: str) -> str:
    """Which row of the precision preference a provider's kernels fit: "cuda" (fp16 first)
    for GPU providers, "cpu" (int8 first) for the rest. Takes ORT's name or our short one."""
    return "cuda" if provider in GPU_PROVIDERS or provider == "cuda" else "cpu"


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


@dataclass(frozen=True)
class SessionSettings:
    """How sessions are made; one object for all of an ``Encoders``' sessions.

    ``device``: "auto" | "cpu" | "cuda" (our provider lists); ``providers``: ORT's own
    list instead (names or ``(name, options)`` pairs, best first; the CPU provider is added
    last when missing), with ``provider_options`` aligned to it as ORT takes them;
    ``session_options``: an ``onnxruntime.SessionOptions`` used as given (our thread and
    spinning defaults then do not apply); ``threads``: intra-op threads (None:
    ``default_threads()``); ``spinning``: let ORT's threads spin-wait between runs (lower
    latency for back-to-back runs, CPU burnt while idle); ``strict``: a device or provider
    that is not available is an error instead of a warning and the CPU.
    """

    device: str = "auto"
    threads: int | None = None
    spinning: bool = False
    providers: tuple | None = None
    provider_options: tuple | None = None
    session_options: Any = field(default=None, compare=False)
    strict: bool = False

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise InputError(f"unknown device {self.device!r} (choose from {', '.join(DEVICES)})")
        if self.threads is not None and (isinstance(self.threads, bool) or int(self.threads) < 1):
            raise InputError(f"threads must be >= 1, got {self.threads}")
        if self.providers is not None:
            object.__setattr__(self, "providers", tuple(self.providers))
            if not self.providers:
                raise InputError("providers is empty: name at least one ONNX Runtime execution provider")
            if self.device != "auto":
                raise InputError(f"give a device ({self.device!r}) or providers, not both")
        if self.provider_options is not None:
            object.__setattr__(self, "provider_options", tuple(self.provider_options))
            if self.providers is None or len(self.provider_options) != len(self.providers):
                raise InputError("provider_options must have one entry per provider in providers")
        if self.session_options is not None and (self.threads is not None or self.spinning):
            raise InputError("session_options are used as given: set threads and spinning in them, not here")

    @property
    def intra_op_threads(self) -> int:
        return int(self.threads) if self.threads is not None else default_threads()

    def describe(self) -> str:
        """One line for logs and benchmark records."""
        if self.session_options is not None:
            how = "the caller's session options"
        else:
            how = f"{self.intra_op_threads} threads, spinning {'on' if self.spinning else 'off'}"
        where = ", ".join(provider_name(p) for p in self.providers) if self.providers else self.device
        return f"{where}; {how}"


def session_options(threads: int | None = None, spinning: bool = False):
    """Our session options: ``threads`` intra-op threads (None: ``default_threads()``), one
    inter-op thread, spinning as asked, and ORT's own log level at errors only (its C++
    warnings would break the one-line-on-stderr rule)."""
    ort = _ort()
    if threads is not None and int(threads) < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads) if threads is not None else default_threads()
    # One model runs at a time per session; inter-op parallelism only adds threads.
    so.inter_op_num_threads = 1
    spin = "1" if spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    so.log_severity_level = 3
    return so


def _provider_list(settings: SessionSettings) -> tuple[list, list | None]:
    """(providers, provider_options) to hand ORT, checked against what it knows."""
    if settings.providers is None:
        choice = resolve_device(settings.device, strict=settings.strict)
        return choice.providers, None
    ort = _ort()
    known = set(ort.get_all_providers())
    for p in settings.providers:
        if provider_name(p) not in known:
            raise InputError(f"unknown ONNX Runtime execution provider {provider_name(p)!r} "
                             f"(this onnxruntime has: {', '.join(ort.get_available_providers())})")
    providers = list(settings.providers)
    options = list(settings.provider_options) if settings.provider_options is not None else None
    if CPU not in (provider_name(p) for p in providers):
        providers.append(CPU)  # whatever the first provider cannot run still runs
        if options is not None:
            options.append({})
    return providers, options


def make_session(path: str | Path, settings: SessionSettings | None = None, *, graph_sha256: str | None = None,
                 cache_dir: str | Path | None = None, **overrides):
    """Create an ``onnxruntime.InferenceSession`` for ``path``.

    ``settings`` (default ``SessionSettings()``), with any field overridden by keyword
    (``make_session(path, device="cpu", threads=1)``). Returns ``(session, provider_used)``:
    the first provider the session really has, as ``short_provider`` names it ("cpu",
    "cuda", or ORT's name), read back rather than assumed. Raises ``BundleError`` when ORT
    cannot load the file and ``InputError`` for a bad device, provider or thread request
    (or, with ``strict``, when the asked-for provider did not start). With the graph's
    ``graph_sha256``, a CPU session on our own settings is made from ORT's optimised form of
    the graph cached under ``cache_dir`` (``runtime.graph_cache``), written on first use.
    """
    settings = replace(settings or SessionSettings(), **overrides) if overrides else (settings or SessionSettings())
    providers, provider_options = _provider_list(settings)
    so = settings.session_options or session_options(settings.threads, settings.spinning)
    path = Path(path)
    cacheable = graph_sha256 is not None and settings.session_options is None and settings.providers is None \
        and [provider_name(p) for p in providers] == [CPU]
    sess = _optimized_session(path, so, graph_sha256, cache_dir) if cacheable else None
    if sess is None:
        sess = _new_session(path, so, providers, provider_options)
    got = sess.get_providers()
    wanted = provider_name(providers[0])
    used = got[0] if got else CPU
    if used != wanted:
        if wanted == CUDA:
            msg = f"CUDA provider failed to start for {path.name}; running on the CPU"
        else:
            msg = f"{wanted} is not available or failed to start for {path.name}; running on {used}"
        if settings.strict:
            raise InputError(msg.split("; running on")[0])
        _warn_once(msg)
    return sess, short_provider(used)


def _new_session(path: Path, so, providers, provider_options):
    ort = _ort()
    try:
        with warnings.catch_warnings():
            # ORT's Python warning about an unavailable provider: we check and say it ourselves.
            warnings.simplefilter("ignore", UserWarning)
            return ort.InferenceSession(str(path), sess_options=so, providers=providers,
                                        provider_options=provider_options)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for bad graphs
        raise BundleError(f"{path}: onnxruntime cannot load this graph ({one_line(exc)})") from None


def _optimized_session(path: Path, so, graph_sha256: str, cache_dir):
    """A CPU session from the cached optimised graph (made and cached now if missing);
    None when the cache cannot be used, so the caller makes a plain session."""
    import os
    import tempfile

    from .graph_cache import optimized_path

    ort = _ort()
    level = so.graph_optimization_level
    cached = optimized_path(graph_sha256, f"level={int(level)}", cache_dir)
    if cached.is_file():
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return ort.InferenceSession(str(cached), sess_options=so, providers=[CPU])
        except Exception:  # noqa: BLE001 - a damaged cache entry: drop it, rebuild below
            so.graph_optimization_level = level
            cached.unlink(missing_ok=True)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".opt-", suffix=".onnx", dir=cached.parent)
        os.close(fd)
    except OSError:
        return None  # no writable cache: a plain session
    so.optimized_model_filepath = tmp
    try:
        sess = _new_session(path, so, [CPU], None)
        os.replace(tmp, cached)
        return sess
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


__all__ = ["SessionSettings", "DeviceChoice", "make_session", "resolve_device", "session_options", "cuda_available",
           "default_threads", "precision_device", "provider_name", "short_provider", "DEVICES", "CPU", "CUDA",
           "GPU_PROVIDERS"]
