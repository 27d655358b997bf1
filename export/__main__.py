"""``python -m export CHECKPOINT --out BUNDLE``: the export command line.

Exit codes: 0 bundle written; 2 bad input (unreadable or wrong checkpoint, output folder
not writable or already holding a bundle, bad calibration folder, bad arguments), with one
line on stderr; 3 ``--strict`` and a parity target was missed (nothing written); 1 the
export itself failed (one line; ``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings

EPILOG = """\
what it writes (into BUNDLE, atomically; an existing bundle is kept unless --force):
  manifest.json               preprocessing, label-set embeddings, parity report, sha256 of every file
  image|text|audio.<p>.onnx   one graph per encoder and precision p
  bpe_simple_vocab_16e6.txt.gz

precisions:
  fp32  exact export (target: cosine to PyTorch min >= 0.9999)
  int8  CPU fast path: static QDQ per-channel (image, audio; calibrated), dynamic (text);
        7-bit weights, so the graph computes the same on every CPU (AVX2, AVX-512 VNNI, AMX,
        ARM); the image tower keeps as many last stages fp32 as its target needs
        (target: mean >= 0.99 and min >= 0.98)
  fp16  GPU (CUDA provider) path; LayerNorm, softmax, reductions, the audio front end stay fp32
        (target: mean >= 0.999)

A missed target is printed as a WARNING and recorded in the manifest; --strict turns it into
exit code 3 and writes nothing. The manifest also holds a golden input per modality and each
graph's cosine on it here: the runtime re-runs it the first time a graph is opened on a
machine (the self-check), so a graph that is wrong on some CPU is caught where it runs.

--calibration DIR: every 4th file (sorted) of each kind is held out from calibration and
becomes the parity report's input for that encoder, with top-10 retrieval agreement.

exit codes:
  0 bundle written   2 bad input (checkpoint, output folder, arguments): one line on stderr
  3 --strict and a parity target missed (nothing written)   1 the export itself failed

examples:
  python -m export AudioCLIP-Full-Training.pt --out bundles/audioclip
  python -m export finetuned.pt --out bundles/ft --precision fp32 int8 fp16 --calibration my_pages/
  python -m export finetuned.pt --out bundles/ft --optimum-preset avx2 --force
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (house rule), exit code 2."""

    def error(self, message: str) -> None:  # noqa: D401
        sys.stderr.write(f"export: error: {message} (see --help)\n")
        raise SystemExit(2)


def parse_args(argv=None) -> argparse.Namespace:
    from runtime.extras import exit_unless_installed

    # Before anything that needs onnx or torch (even --help lists the quantisation presets).
    exit_unless_installed("python -m export", "export")
    from runtime.manifest import PRECISIONS

    from .quantize import PRESETS, TOOLS

    p = _Parser(prog="python -m export",
                description="Export an AudioCLIP checkpoint (published, or fine-tuned here) to a manga-music "
                            "bundle: one ONNX graph per encoder and precision, checked and measured against "
                            "PyTorch, plus the manifest the runtime reads.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a .pt checkpoint: AudioCLIP-Full/Partial-Training.pt, or one saved by training")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to write")
    p.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32", "int8"], metavar="P",
                   help="precisions to export: fp32 int8 fp16 (default: fp32 int8)")
    p.add_argument("--calibration", metavar="DIR",
                   help="folder of manga pages and/or music files for int8 calibration "
                        "(default: a built-in synthetic set)")
    p.add_argument("--optimum-preset", choices=PRESETS, metavar="PRESET",
                   help="Hugging Face optimum quantisation preset for the target CPU: "
                        f"{', '.join(PRESETS)} (default: this machine's, when optimum is installed)")
    p.add_argument("--quant-tool", choices=TOOLS, default="auto",
                   help="who quantises: optimum, onnxruntime, or auto (optimum if installed)")
    p.add_argument("--parity-inputs", type=int, default=32, metavar="N",
                   help="held-out inputs per encoder for the parity report (default 32)")
    p.add_argument("--threads", type=int, default=2, metavar="N",
                   help="ONNX Runtime threads for calibration and parity (default 2)")
    p.add_argument("--strict", action="store_true", help="fail (exit 3, nothing written) if a parity target is missed")
    p.add_argument("--force", action="store_true", help="replace an existing bundle at BUNDLE")
    p.add_argument("--demo", action="store_true", help="mark the bundle as a demo model in its manifest")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no notes, only errors and warnings")
    p.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    args = p.parse_args(argv)
    if args.parity_inputs < 1:
        p.error("--parity-inputs must be at least 1")
    if args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.debug:
        warnings.filterwarnings("ignore")
        logging.disable(logging.WARNING)
    from runtime.errors import MangaMusicError, one_line

    from . import ParityTargetError, ParityWarning, build_bundle_report
    from .parity import MIN_PARITY_INPUTS

    from tqdm import tqdm

    def note(msg: str) -> None:
        if not args.quiet:
            tqdm.write(f"  {msg}", file=sys.stderr)  # above the progress bar, not through it

    missed: list[str] = []

    def loud(message, category, *_rest, **_kw) -> None:
        if issubclass(category, ParityWarning):
            missed.append(str(message))
            tqdm.write(f"WARNING: {message}", file=sys.stderr)
        elif args.debug:
            sys.stderr.write(f"{category.__name__}: {message}\n")

    if args.parity_inputs < MIN_PARITY_INPUTS:
        sys.stderr.write(f"WARNING: --parity-inputs {args.parity_inputs} is below {MIN_PARITY_INPUTS}: "
                         "the parity report will rest on fewer inputs than the project requires\n")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", ParityWarning)
            warnings.showwarning = loud
            report = build_bundle_report(
                args.checkpoint, args.out, precisions=tuple(args.precision), calibration=args.calibration,
                demo=args.demo, strict=args.strict, force=args.force, progress=not args.quiet,
                optimum_preset=args.optimum_preset, quant_tool=args.quant_tool, parity_inputs=args.parity_inputs,
                threads=args.threads, log=note)
    except ParityTargetError as exc:
        sys.stderr.write(f"export: {one_line(exc)}\n")
        return 3
    except MangaMusicError as exc:
        if args.debug:
            raise
        sys.stderr.write(f"export: {one_line(exc)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("export: interrupted; nothing was written\n")
        return 130
    except Exception as exc:  # noqa: BLE001 - exporter / quantiser failures: one line, not a traceback
        if args.debug:
            raise
        sys.stderr.write(f"export: failed: {type(exc).__name__}: {one_line(exc)} (run with --debug for details)\n")
        return 1
    _summary(report, missed)
    return 0


def _summary(report, missed: list[str]) -> None:
    m = report.manifest
    lines = [f"bundle written: {report.out_dir}  ({report.seconds:.0f} s)"]
    for e in m.encoders:
        p = next((x for x in m.parity if x.modality == e.modality and x.precision == e.precision), None)
        par = (f"cosine min {p.min_cosine:.5f} mean {p.mean_cosine:.5f}" + ("" if p.passed else "  MISSED")
               if p else "")
        lines.append(f"  {e.file:18s} {e.bytes / 1e6:8.1f} MB  {par}  [{e.method or 'exact'}]")
        if e.int8_format is not None:
            f = e.int8_format
            lines.append(f"  {'':18s} int8: {f.weight_bits}-bit weights (max |w| {f.max_abs_weight}, pair sums "
                         f"<= {f.pair_sum_bound}): {'exact on every CPU' if f.saturation_free else 'MAY SATURATE'}"
                         f"; {f.fp32_nodes} nodes fp32")
    where = next((p for p in m.parity), None)
    if where is not None:
        lines.append(f"  parity measured on {where.cpu} with onnxruntime {where.onnxruntime}")
    for n in report.notes:
        lines.append(f"  note: {n}")
    if missed:
        lines.append(f"WARNING: {len(missed)} parity target(s) missed; see the lines above (the manifest "
                     "records them; --strict refuses such a bundle)")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
