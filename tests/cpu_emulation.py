"""Run Python code on an emulated CPU (qemu user mode), so int8 results can be checked on a
CPU the test machine is not: an AVX2-only x86 (QEMU's ``EPYC-Milan`` model: AVX2 and FMA,
no AVX-512, no VNNI), whose ONNX Runtime int8 kernels saturate where VNNI ones do not.

ONNX Runtime picks its kernels from CPUID, which qemu emulates for the model asked for, so
the guest really runs the AVX2 code paths. ``/proc/cpuinfo`` is still the host's: code
under emulation must not trust it (the self-check cache is keyed by it, so these tests use
their own cache folder). QEMU 7.2's x86 emulation covers AVX2 but not AVX-512.

Tests skip when ``qemu-x86_64`` is not installed (``.ci/run`` installs Debian's qemu-user).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QEMU = shutil.which("qemu-x86_64")
AVX2_ONLY = "EPYC-Milan"


def need_qemu() -> None:
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86 CPU emulation needs an x86-64 host")
    if QEMU is None:
        pytest.skip("qemu-x86_64 is not installed (apt-get install qemu-user): no emulated AVX2 CPU")


def run_emulated(script: str, *args: str, cpu: str = AVX2_ONLY, timeout: int = 600,
                 env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -c script args`` under ``qemu-x86_64 -cpu cpu`` with this interpreter and
    this process's import path; returns the completed process (stdout, stderr as text)."""
    need_qemu()
    python = os.path.realpath(sys.executable)
    path = os.pathsep.join([str(ROOT), *[p for p in sys.path if p and Path(p).is_dir()]])
    full_env = {**os.environ, "PYTHONPATH": path, **(env or {})}
    return subprocess.run([QEMU, "-cpu", cpu, python, "-c", script, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=full_env)


def check(run: subprocess.CompletedProcess) -> str:
    if run.returncode != 0:
        raise AssertionError(f"emulated run failed ({run.returncode}): {run.stderr[-3000:]}")
    return run.stdout
