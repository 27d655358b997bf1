"""What this machine's CPU offers int8 inference: its model name and the instruction-set
features that decide which integer kernels ONNX Runtime runs.

ONNX Runtime picks its int8 matrix kernels at run time from the CPU: AVX2 (u8 x s8 pairs
summed in 16 bits, which can saturate), AVX-VNNI / AVX-512 VNNI (32-bit sums), AMX, and on
ARM the dot-product and i8mm extensions. The same int8 graph can therefore give different
numbers on different machines, so the export records the features its parity was measured
on, and the runtime's self-check keys its cached verdict by them (``runtime.selfcheck``).

Read from ``/proc/cpuinfo`` on Linux (x86 ``flags``, ARM ``Features``), ``sysctl`` on macOS
and ``IsProcessorFeaturePresent`` on Windows; anything unreadable gives an empty feature
list rather than an error, since this is bookkeeping, never a reason to refuse to run.
"""
from __future__ import annotations

import functools
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# The features that change which int8 kernels run (or whether they saturate), as Linux
# names them. Everything else in a flags line is noise for this purpose.
INT8_FEATURES = (
    "sse4_1", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx_vnni_int8", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "asimddp", "i8mm", "sve", "sve2", "svei8mm", "bf16",
)
# macOS sysctl names -> the Linux names above (Apple silicon and Intel Macs).
_MAC_FEATURES = {
    "hw.optional.arm.FEAT_DotProd": "asimddp", "hw.optional.arm.FEAT_I8MM": "i8mm",
    "hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.neon": "asimd",
    "hw.optional.avx2_0": "avx2", "hw.optional.avx512f": "avx512f", "hw.optional.avx512bw": "avx512bw",
    "hw.optional.avx512vnni": "avx512_vnni",
}
# Windows IsProcessorFeaturePresent ids -> names.
_WIN_FEATURES = {40: "avx2", 41: "avx512f", 43: "asimddp", 19: "asimd"}


@dataclass(frozen=True)
class CpuInfo:
    """A CPU as the int8 kernels see it."""

    model: str  # e.g. "AMD EPYC 7B13", or the machine type when no name is readable
    machine: str  # platform.machine(): x86_64, aarch64, arm64, AMD64
    features: tuple[str, ...]  # the INT8_FEATURES present, in that order

    def has(self, feature: str) -> bool:
        return feature in self.features

    @property
    def int8_class(self) -> str:
        """The int8 kernel family ONNX Runtime would pick here, in words."""
        if self.has("amx_int8"):
            return "AMX"
        if self.has("avx512_vnni"):
            return "AVX-512 VNNI"
        if self.has("avx_vnni"):
            return "AVX-VNNI"
        if self.has("avx512bw"):
            return "AVX-512 (no VNNI)"
        if self.has("avx2"):
            return "AVX2 (no VNNI)"
        if self.has("i8mm"):
            return "ARM i8mm"
        if self.has("asimddp"):
            return "ARM dot-product"
        if self.machine.lower() in ("aarch64", "arm64"):
            return "ARM NEON (no dot-product)"
        return "other"

    def describe(self) -> str:
        return f"{self.model} ({self.int8_class}; {' '.join(self.features) or 'features unknown'})"

    def to_dict(self) -> dict:
        return {"model": self.model, "machine": self.machine, "features": list(self.features),
                "int8_class": self.int8_class}


def _pick(names) -> tuple[str, ...]:
    have = set(names)
    return tuple(f for f in INT8_FEATURES if f in have)


def _linux(text: str) -> tuple[str, tuple[str, ...]]:
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return model, _pick(flags)


def _sysctl(name: str) -> str:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _mac() -> tuple[str, tuple[str, ...]]:
    model = _sysctl("machdep.cpu.brand_string")
    return model, _pick(name for key, name in _MAC_FEATURES.items() if _sysctl(key) == "1")


def _windows() -> tuple[str, tuple[str, ...]]:
    try:
        import ctypes

        present = ctypes.windll.kernel32.IsProcessorFeaturePresent  # type: ignore[attr-defined]
        names = [name for pf, name in _WIN_FEATURES.items() if present(pf)]
    except Exception:  # noqa: BLE001 - not Windows after all, or no kernel32
        names = []
    return platform.processor(), _pick(names)


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU (read once per process)."""
    machine = platform.machine() or "unknown"
    model, features = "", ()
    if sys.platform.startswith("linux"):
        try:
            model, features = _linux(Path("/proc/cpuinfo").read_text(errors="ignore"))
        except OSError:
            pass
    elif sys.platform == "darwin":
        model, features = _mac()
    elif sys.platform == "win32":
        model, features = _windows()
    return CpuInfo(model or platform.processor() or machine, machine, features)


__all__ = ["CpuInfo", "cpu_info", "INT8_FEATURES"]
