"""Plumbing shared by the runtime's command-line tools.

Every command follows the same rules: a progress bar on long work, ``--help`` that
explains, exit 0 on success, and exit 2 with exactly one line on stderr for bad usage or
bad input, with the traceback only under ``--debug``. ``run_main`` enforces the
exit-code rules around a command's ``main`` and prints the library's notes (the demo model
note) after a command's output, only when it succeeded; ``Parser`` makes argparse's own
usage errors one line too; ``Progress`` is the bar; ``shown_path`` is how every command
prints a path. This module and the commands depend on the core, never the other way round.
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
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .defaults import NOTE_ATTR
from .errors import MangaMusicError, one_line
from .timecode import mmss  # noqa: F401  (re-exported: the commands print times with it)

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
    """Options every runtime command takes: device or providers, threads, precision, self-check, debug."""
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the encoders run: 'auto' uses CUDA when onnxruntime-gpu sees a GPU, "
                        "else the CPU (default: auto)")
    p.add_argument("--provider", action="append", default=None, metavar="NAME",
                   help="an ONNX Runtime execution provider to run the encoders on instead of --device, e.g. "
                        "CoreMLExecutionProvider, DmlExecutionProvider, OpenVINOExecutionProvider (repeatable, best "
                        "first; the CPU provider is always added last). The provider really used is checked and a "
                        "fallback is reported")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="CPU threads, the same for every encoder (onnxruntime intra-op threads; default: the CPUs "
                        "this process may use)")
    p.add_argument("--precision", choices=("auto", "int8", "fp16", "fp32"), default="auto",
                   help="which encoder graphs to use: 'auto' = int8 on the CPU, fp16 on a GPU (chosen for the "
                        "provider really in use), falling back to what the bundle has (default: auto)")
    p.add_argument("--no-selfcheck", action="store_true",
                   help="do not run each graph's golden input the first time it is opened on this machine "
                        "(the check that catches an int8 graph computing wrong numbers on this CPU; a pass is "
                        "remembered, so it costs one encoder call per graph and machine). Also: "
                        "MANGA_MUSIC_SELFCHECK=0")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="where self-check passes are remembered (default: $MANGA_MUSIC_CACHE, else the user "
                        "cache folder, e.g. ~/.cache/manga-music)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def encoder_options(args: argparse.Namespace) -> dict:
    """The keyword arguments ``Encoders`` and ``Retriever`` take, from the common options."""
    if args.provider and args.device != "auto":
        raise UsageError("--provider names the execution providers itself: drop --device")
    return dict(device=args.device, providers=args.provider, precision=args.precision, threads=args.threads,
                selfcheck=False if args.no_selfcheck else None, cache_dir=args.cache_dir)


def shown_path(path: str | os.PathLike) -> str:
    """A path as every command's text output shows it: relative to the working directory
    when it is under it (short, and what the user typed), else absolute. JSON output keeps
    absolute paths."""
    p = Path(path)
    absolute = p if p.is_absolute() else Path.cwd() / p
    absolute = Path(os.path.normpath(absolute))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


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
    """Writes to whatever ``sys.stderr`` is at the time (``_native_stderr_captured`` swaps it).

    Records marked as notes (``defaults.NOTE_ATTR``: the demo model note) are held back:
    ``run_main`` prints them after the command's output when it succeeded, and drops them
    otherwise, so an error stays the one line on stderr."""

    def __init__(self) -> None:
        super().__init__()
        self.notes: list[str] = []

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, NOTE_ATTR, False):
            if record.getMessage() not in self.notes:
                self.notes.append(record.getMessage())
            return
        super().emit(record)

    def flush_notes(self, show: bool) -> None:
        if show:
            for note in self.notes:
                sys.stderr.write(f"note: {note}\n")
        self.notes.clear()


def _setup_logging() -> _StderrHandler:
    # Warnings from the library (CUDA fell back to CPU, precision fell back) go to stderr
    # as plain "warning: ..." lines rather than logging's default format.
    log = logging.getLogger(LOGGER_NAME)
    handler = next((h for h in log.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.WARNING)
    return handler


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
    handler = _setup_logging()
    code = EXIT_UNEXPECTED
    with _native_stderr_captured(not debug):
        try:
            code = _run(main, args, prog, debug)
        finally:
            handler.flush_notes(show=code == EXIT_OK)
    return code


def _run(main, args: list[str], prog: str, debug: bool) -> int:
    try:
        return main(args)
    except SystemExit:
        raise
    except MangaMusicError as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"{prog}: error: {one_line(exc)}\n")
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
        sys.stderr.write(f"{prog}: unexpected error: {type(exc).__name__}: {one_line(exc)} "
                         f"(rerun with --debug for the traceback)\n")
        return EXIT_UNEXPECTED


class Progress:
    """A progress bar on stderr: tqdm when it is installed, a small one of our own otherwise.

    Silent unless stderr is a terminal, so logs and tests see only real messages. tqdm is
    not a runtime dependency, hence the fallback, which behaves the same way: it is drawn
    as soon as it exists (0/N), names the item being worked on (``start``) rather than the
    one just finished, and shows the elapsed time and an estimate of the time left.
    """

    WIDTH = 24  # characters of the bar itself
    NOTE = 30  # characters of the item's name shown (its end: the file name)

    def __init__(self, total: int, desc: str, unit: str = "file", enabled: bool | None = None):
        self.total = max(0, int(total))
        self.desc = desc
        self.unit = unit
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.n = 0
        self.note = ""
        self._bar = None
        self._start = time.monotonic()
        self._last_draw = float("-inf")
        self._drawn = 0  # length of the last line drawn, to blank it out on the next
        if self.enabled:
            try:
                from tqdm import tqdm  # optional
                self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=sys.stderr, leave=False)
            except ImportError:
                self._bar = None
                self._draw(force=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, note: str) -> None:
        """Say which item is being worked on now (shown until the next one starts)."""
        self.note = str(note)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(self.note[-40:], refresh=True)
        else:
            self._draw(force=True)

    def update(self, n: int = 1, note: str | None = None) -> None:
        """``n`` more items done; ``note``, when given, replaces the item's name shown."""
        self.n += n
        if note is not None:
            self.note = str(note)
        if not self.enabled:
            return
        if self._bar is not None:
            if note is not None:
                self._bar.set_postfix_str(self.note[-40:], refresh=False)
            self._bar.update(n)
            return
        self._draw(force=self.n >= self.total)

    def line(self, now: float | None = None) -> str:
        """The fallback bar's text: desc, bar, count, elapsed, time left, the item."""
        now = time.monotonic() if now is None else now
        elapsed = max(now - self._start, 0.0)
        frac = min(self.n / self.total, 1.0) if self.total else 1.0
        filled = int(round(frac * self.WIDTH))
        if self.n and self.total:
            left = mmss(elapsed / self.n * max(self.total - self.n, 0))
        else:
            left = "--:--"  # nothing finished yet: no rate to estimate from
        note = self.note[-self.NOTE:]
        return (f"{self.desc} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.n}/{self.total} {self.unit}s "
                f"{mmss(elapsed)} elapsed, {left} left  {note}").rstrip()

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return  # redraw at most 10 times a second
        self._last_draw = now
        text = self.line(now)
        sys.stderr.write("\r" + text + " " * max(self._drawn - len(text), 0))
        sys.stderr.flush()
        self._drawn = len(text)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        else:
            sys.stderr.write("\r" + " " * self._drawn + "\r")
            sys.stderr.flush()
        self.enabled = False
