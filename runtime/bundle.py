"""A model bundle on disk: load it, validate it, and pick which encoder file to run.

A bundle is a folder: ``manifest.json`` (schema in ``manifest.py``), one ONNX graph per
encoder and precision, and the BPE vocabulary. ``Bundle.load`` is cheap and strict about
everything cheap to check (schema, every listed file present with its recorded size, the
vocabulary's sha256). The expensive check, each graph's sha256 and its inputs/outputs
against the manifest, runs right before that graph's session is created (``open_session``),
so a query that only needs the image encoder never reads the audio graph from disk.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import BundleError
from .hashing import sha256_file
from .manifest import PRECISIONS, EncoderFile, Manifest, ManifestError, TensorSpec

MANIFEST_NAME = "manifest.json"

# What `auto` prefers on each device, best first; the rest is the fallback order.
# int8 is the fast CPU path; fp16 is the fast GPU path (int8 kernels on CUDA are patchy).
PRECISION_PREFERENCE = {"cpu": ("int8", "fp32", "fp16"), "cuda": ("fp16", "fp32", "int8")}

# ORT type strings -> manifest dtype names.
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
}


# sha256 results per (path, size, mtime_ns): a process that opens several sessions of one
# bundle, or reloads it, hashes each file once. Any rewrite changes mtime and misses.
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _cached_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


@dataclass(frozen=True)
class PrecisionChoice:
    """Which precision a modality runs at, and why, when it is not what was asked for."""

    modality: str
    requested: str
    precision: str
    note: str = ""


@dataclass(frozen=True)
class Bundle:
    """A validated bundle folder. ``fingerprint`` (sha256 of manifest.json's bytes) names
    the exact model: the manifest lists every graph's sha256, so equal fingerprints mean
    equal embeddings, and a library records the fingerprint it was built with."""

    dir: Path
    manifest: Manifest
    fingerprint: str

    # -- loading -----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "Bundle":
        bdir = Path(path)
        mpath = bdir / MANIFEST_NAME
        if not bdir.is_dir():
            raise BundleError(f"{bdir}: no bundle here (expected a folder holding {MANIFEST_NAME})")
        if not mpath.is_file():
            raise BundleError(f"{bdir}: not a bundle (no {MANIFEST_NAME})")
        raw = mpath.read_bytes()
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{mpath}: not valid JSON ({exc})") from None
        try:
            manifest = Manifest.from_dict(data)
        except ManifestError as exc:
            raise BundleError(f"{mpath}: {exc}") from None
        bundle = cls(bdir.resolve(), manifest, hashlib.sha256(raw).hexdigest())
        bundle._check_files()
        return bundle

    def _check_files(self) -> None:
        for enc in self.manifest.encoders:
            p = self._member(enc.file, f"encoder {enc.modality}.{enc.precision}")
            if not p.is_file():
                raise BundleError(f"{self.dir}: encoder file {enc.file} is missing")
            size = p.stat().st_size
            if size != enc.bytes:
                raise BundleError(f"{p}: size {size} bytes does not match the manifest ({enc.bytes}); "
                                  f"the file is truncated or was replaced")
        vocab = self.vocab_path
        if not vocab.is_file():
            raise BundleError(f"{self.dir}: vocabulary file {self.manifest.text.vocab_file} is missing")
        if self.manifest.vocab_sha256 and _cached_sha256(vocab) != self.manifest.vocab_sha256:
            raise BundleError(f"{vocab}: sha256 does not match the manifest (vocab_sha256); the file was modified")

    def _member(self, name: str, what: str) -> Path:
        # A manifest is data from elsewhere: its file names must stay inside the bundle.
        if not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"{self.dir / MANIFEST_NAME}: {what} file name {name!r} points outside the bundle")
        return self.dir / name

    # -- facts ---------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return self.manifest.embed_dim

    @property
    def is_demo(self) -> bool:
        return bool(self.manifest.model.demo)

    @property
    def vocab_path(self) -> Path:
        return self._member(self.manifest.text.vocab_file, "vocabulary")

    def encoder_path(self, enc: EncoderFile) -> Path:
        return self._member(enc.file, f"encoder {enc.modality}.{enc.precision}")

    # -- precision -------------------------------------------------------------------------
    def choose_precision(self, modality: str, requested: str = "auto", device: str = "cpu") -> PrecisionChoice:
        """``auto``: int8 on CPU, fp16 on CUDA, else the best the bundle has (and say so).
        An explicit precision the bundle lacks is an error naming what it has."""
        have = self.manifest.precisions(modality)
        if not have:
            raise BundleError(f"{self.dir}: bundle has no {modality} encoder")
        if requested != "auto":
            if requested not in PRECISIONS:
                raise BundleError(f"unknown precision {requested!r} (choose from auto, {', '.join(PRECISIONS)})")
            if requested not in have:
                raise BundleError(f"{self.dir}: bundle has no {modality} encoder at {requested} "
                                  f"(it has: {', '.join(sorted(have))})")
            return PrecisionChoice(modality, requested, requested)
        order = PRECISION_PREFERENCE["cuda" if device == "cuda" else "cpu"]
        chosen = next(p for p in order if p in have)
        note = "" if chosen == order[0] else (f"bundle has no {order[0]} {modality} encoder for {device}; "
                                              f"using {chosen}")
        return PrecisionChoice(modality, requested, chosen, note)

    # -- integrity -------------------------------------------------------------------------
    def verify_file(self, enc: EncoderFile, cache_dir: str | Path | None = None) -> Path:
        """Check one graph's sha256 against the manifest; return its path. The hash of a
        file unchanged since it was last hashed comes from the cache (``runtime.graph_cache``)."""
        from .graph_cache import cached_file_sha256

        p = self.encoder_path(enc)
        if not p.is_file():
            raise BundleError(f"{self.dir}: encoder file {enc.file} is missing")
        if cached_file_sha256(p, cache_dir) != enc.sha256:
            raise BundleError(f"{p}: sha256 does not match the manifest; the file was modified or corrupted")
        return p

    def verify(self) -> None:
        """Hash every graph now (what ``open_session`` does lazily, one graph at a time)."""
        for enc in self.manifest.encoders:
            self.verify_file(enc)

    def check_io(self, sess, enc: EncoderFile) -> None:
        """Compare a session's inputs/outputs with the manifest entry: names, dtypes, ranks
        and fixed dimensions. A mismatch is a ``BundleError`` naming the file and field."""
        for kind, specs, actual in (("input", enc.inputs, sess.get_inputs()),
                                    ("output", enc.outputs, sess.get_outputs())):
            by_name = {a.name: a for a in actual}
            for spec in specs:
                a = by_name.get(spec.name)
                if a is None:
                    raise BundleError(f"{enc.file}: manifest {kind} '{spec.name}' is not in the graph "
                                      f"(graph {kind}s: {sorted(by_name)})")
                _compare_spec(enc.file, kind, spec, a)
            extra = sorted(set(by_name) - {s.name for s in specs})
            if kind == "input" and extra:  # an input we would not feed makes every run fail
                raise BundleError(f"{enc.file}: graph has input(s) {extra} that the manifest does not list")

    def open_session(self, modality: str, precision: str, settings=None, part: str = "",
                     cache_dir: str | Path | None = None, **overrides):
        """Verify and open one encoder (or, with ``part``, one half of the audio encoder):
        ``(session, provider_used, EncoderFile)``.

        ``settings``: a ``sessions.SessionSettings`` (default: ours), fields overridable by
        keyword (``device="cpu", threads=1``)."""
        from .sessions import make_session

        try:
            enc = self.manifest.encoder(modality, precision, part)
        except ManifestError as exc:
            raise BundleError(f"{self.dir}: {exc}") from None
        path = self.verify_file(enc, cache_dir)
        sess, used = make_session(path, settings, graph_sha256=enc.sha256, cache_dir=cache_dir, **overrides)
        self.check_io(sess, enc)
        return sess, used, enc


def _compare_spec(file: str, kind: str, spec: TensorSpec, actual) -> None:
    dtype = _ORT_DTYPES.get(actual.type, actual.type)
    if dtype != spec.dtype:
        raise BundleError(f"{file}: {kind} '{spec.name}' has dtype {dtype} in the graph but {spec.dtype} in the manifest")
    shape = list(actual.shape or [])
    if len(shape) != len(spec.shape):
        raise BundleError(f"{file}: {kind} '{spec.name}' has rank {len(shape)} in the graph "
                          f"but {len(spec.shape)} in the manifest")
    for i, (g, m) in enumerate(zip(shape, spec.shape)):
        g_fixed, m_fixed = isinstance(g, int) and g > 0, isinstance(m, int)
        if g_fixed and m_fixed and g != m:
            raise BundleError(f"{file}: {kind} '{spec.name}' dimension {i} is {g} in the graph but {m} in the manifest")
        if g_fixed and not m_fixed:
            raise BundleError(f"{file}: {kind} '{spec.name}' dimension {i} is fixed at {g} in the graph "
                              f"but dynamic ('{m}') in the manifest")


def load_bundle(path: str | Path | Bundle | None = None) -> Bundle:
    """A ``Bundle`` from a path, an existing ``Bundle``, or ``None`` (the shipped default)."""
    if isinstance(path, Bundle):
        return path
    if path is None:
        from .defaults import EXPORT_COMMAND, default_bundle

        p = default_bundle()
        if not (p / MANIFEST_NAME).is_file():
            raise BundleError(f"no bundle given and the default bundle is not installed at {p}; "
                              f"export one with `{EXPORT_COMMAND}` and pass --bundle my-bundle")
        return Bundle.load(p)
    return Bundle.load(os.fspath(path))
