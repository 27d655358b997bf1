"""Plumbing shared by the runtime's command-line tools.

Every command follows the same rules (DESIGN.md, "The CLI"): a progress bar on long work,
``--help`` that explains, exit 0 on success, and exit 2 with exactly one line on stderr for
bad usage or bad input, with the traceback only under ``--debug``. ``run_main`` enforces the
exit-code rules around a command's ``main``; ``Parser`` makes argparse's own usage errors
one line too; ``Progress`` is the bar.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
import traceback
from typing import Callable, Iterator, Sequence

from .errors import MangaMusicError

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

LOGGER_NAME = "manga_music"


class UsageError(MangaMusicError):
    """Bad command-line usage (a missing or conflicting option)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the usage block first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(EXIT_BAD_INPUT)


def add_common_options(p: argparse.ArgumentParser) -> None:
    """Options every runtime command takes: device, threads, precision, debug."""
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the encoders run: 'auto' uses CUDA when onnxruntime-gpu sees a GPU, "
                        "else the CPU (default: auto)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="CPU threads per encoder (onnxruntime intra-op threads; default: all cores)")
    p.add_argument("--precision", choices=("auto", "int8", "fp16", "fp32"), default="auto",
                   help="which encoder graphs to use: 'auto' = int8 on CPU, fp16 on CUDA, falling back "
                        "to what the bundle has (default: auto)")
    p.add_argument("--no-selfcheck", action="store_true",
                   help="do not run each graph's golden input the first time it is opened on this machine "
                        "(the check that catches an int8 graph computing wrong numbers on this CPU; a pass is "
                        "remembered, so it costs one encoder call per graph and machine). Also: "
                        "MANGA_MUSIC_SELFCHECK=0")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="where self-check passes are remembered (default: $MANGA_MUSIC_CACHE, else the user "
                        "cache folder, e.g. ~/.cache/manga-music)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value



class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (``_native_stderr_captured`` swaps it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _setup_logging() -> None:
    # Warnings from the library (CUDA fell back to CPU, precision fell back) go to stderr
    # as plain "warning: ..." lines rather than logging's default format.
    log = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("warning: %(message)s"))
        log.addHandler(h)
        log.propagate = False
    log.setLevel(logging.WARNING)


@contextlib.contextmanager
def _native_stderr_captured(enabled: bool) -> Iterator[None]:
    """Keep C libraries' own chatter off the terminal while a command runs.

    Decoders write notes straight to file descriptor 2 (libmpg123 prints "Note: Illegal
    Audio-MPEG-Header" for a text file named .mp3; ORT's C++ logger can too), which would
    break the one-line-per-error rule even though we report the failure ourselves. Fd 2
    is pointed at a scratch file; Python's ``sys.stderr`` gets a duplicate of the real
    stderr, so our own messages, warnings and progress bar still show. ``--debug`` turns
    this off, so native messages are there when they are wanted.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced by a non-file (IDE, pytest)
        enabled = False
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    python_stderr = sys.stderr
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        sys.stderr = open(os.dup(saved), "w", buffering=1, encoding=python_stderr.encoding or "utf-8",
                          errors="backslashreplace")
        try:
            yield
        finally:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = python_stderr
            os.dup2(saved, fd)
            os.close(saved)


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None,
             prog: str = "manga-music") -> int:
    """Call ``main(argv)`` and turn what escapes it into an exit code and one stderr line."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    _setup_logging()
    with _native_stderr_captured(not debug):
        return _run(main, args, prog, debug)


def _run(main, args: list[str], prog: str, debug: bool) -> int:
    try:
        return main(args)
    except SystemExit:
        raise
    except MangaMusicError as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"{prog}: error: {_one_line(exc)}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return EXIT_INTERRUPTED
    except OSError as exc:
        # Disk full, permission denied, a folder that vanished: the user's environment,
        # not a bug, so one line and the usage exit code.
        if debug:
            traceback.print_exc()
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        sys.stderr.write(f"{prog}: error: {where}{exc.strerror or exc}\n")
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - last resort: still one line, traceback on demand
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"{prog}: unexpected error: {type(exc).__name__}: {_one_line(exc)} "
                         f"(rerun with --debug for the traceback)\n")
        return EXIT_UNEXPECTED


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def mmss(seconds: float) -> str:
    """Seconds -> 'mm:ss' (minutes keep counting past 59, as music players show them)."""
    total = max(0, int(round(seconds)))
    return f"{total // 60:02d}:{total % 60:02d}"


class Progress:
    """A progress bar on stderr: tqdm when it is installed, a small one of our own otherwise.

    Silent unless stderr is a terminal, so logs and tests see only real messages.
    tqdm is not a runtime dependency, hence the fallback.
    """

    def __init__(self, total: int, desc: str, unit: str = "file", enabled: bool | None = None):
        self.total = max(0, int(total))
        self.desc = desc
        self.unit = unit
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.n = 0
        self._bar = None
        self._start = time.monotonic()
        self._last_draw = 0.0
        if self.enabled:
            try:
                from tqdm import tqdm  # optional
                self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=sys.stderr, leave=False)
            except ImportError:
                self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, note: str = "") -> None:
        self.n += n
        if not self.enabled:
            return
        if self._bar is not None:
            if note:
                self._bar.set_postfix_str(note[-40:], refresh=False)
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last_draw < 0.1 and self.n < self.total:
            return  # redraw at most 10 times a second
        self._last_draw = now
        frac = self.n / self.total if self.total else 1.0
        width = 24
        filled = int(round(frac * width))
        rate = self.n / max(now - self._start, 1e-9)
        sys.stderr.write(f"\r{self.desc} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{self.n}/{self.total} {self.unit}s {rate:.1f}/s {note[-30:]:<30}")
        sys.stderr.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.n or self.total:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()
        self.enabled = False
