"""PyTorch AudioCLIP -> the bundle folder the torch-free runtime loads.

One ONNX graph per encoder and precision (fp32, int8, fp16), checked with onnx.checker and
strict shape inference, each measured against PyTorch on held-out inputs, plus the
manifest (preprocessing, label-set text embeddings, parity report, sha256 of every file)
and the BPE vocabulary. ``build_bundle`` is the API; ``python -m export`` the CLI.

    from export import build_bundle
    manifest = build_bundle("checkpoint.pt", "my-bundle", precisions=("fp32", "int8"))
"""
from __future__ import annotations

from .bundle_writer import (BundleWriteError, ExportReport, ParityTargetError, ParityWarning, build_bundle,
                            build_bundle_report, label_embeddings)
from .parity import TARGETS

__all__ = ["build_bundle", "build_bundle_report", "label_embeddings", "ExportReport", "BundleWriteError",
           "ParityTargetError", "ParityWarning", "TARGETS"]
