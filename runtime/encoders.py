"""The three encoders of a bundle behind one object: inputs in, unit vectors out.

``Encoders`` opens each ONNX session the first time its modality is used, so a query that
only embeds pages never reads the text or audio graph. Every ``embed_*`` method takes a
list, streams it through the graph in batches (a generator, so a thousand pages are never
all decoded at once), and returns L2-normalised float32 [N, D]; an empty list gives (0, D).
Tensor names and dtypes come from the manifest, never from constants here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .bundle import Bundle, PrecisionChoice, load_bundle
from .errors import BundleError, InputError, SilentAudioError
from .manifest import EncoderFile
from .sessions import DeviceChoice, SessionSettings, precision_device, provider_name, resolve_device

log = logging.getLogger("manga_music")

_EPS = 1e-12
# One-pass embedding pays from this many windows on (a 12.5 s track at a 2.5 s hop).
SPAN_MIN_WINDOWS = 4
# Tracks tried before one-pass embedding is given up for the session when most disagree.
SPAN_TRIAL = 3


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows to unit length (float32); an all-zero row stays zero instead of becoming NaN."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, _EPS)).astype(np.float32, copy=False)


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of at most ``size`` items, lazily."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(frozen=True)
class LoadedEncoder:
    """One open session and the manifest entry it was checked against."""

    modality: str
    encoder: EncoderFile
    provider: str  # "cpu" | "cuda", as the session reports it
    session: Any = field(repr=False, compare=False)

    @property
    def input_name(self) -> str:
        return self.encoder.inputs[0].name

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self.encoder.inputs[0].dtype)

    @property
    def output_name(self) -> str:
        return self.encoder.outputs[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        (out,) = self.session.run([self.output_name], {self.input_name: x})
        return np.asarray(out, dtype=np.float32)


@dataclass(frozen=True)
class TrackEmbedding:
    """A track in the embedding space: each window, where it starts, and the whole."""

    windows: np.ndarray  # float32 [W, D], unit rows
    starts: np.ndarray  # float64 [W], seconds
    pooled: np.ndarray  # float32 [D], unit: normalised mean of the window embeddings
    duration: float  # seconds, after resampling


def _describe_audio(src: Any) -> str:
    return str(src) if isinstance(src, (str, Path)) else f"<waveform of {np.shape(src)[0]} samples>"


def _is_single(items: Any) -> bool:
    """One page rather than a list of them: a path, bytes, a PIL image, a uint8 image array
    (HxW grey or HxWxC), or one page's preprocessed float pixels [3, S, S]. A uint8 array
    of rank 4 or float pixels [N, 3, S, S] are batches."""
    from PIL import Image

    if isinstance(items, np.ndarray):
        return items.ndim in (2, 3) if items.dtype == np.uint8 else items.ndim == 3
    return isinstance(items, (str, Path, bytes, Image.Image))


class Encoders:
    """Lazy sessions for a bundle's image, text and audio encoders.

    ``device``: "auto" | "cpu" | "cuda"; ``precision``: "auto" | "int8" | "fp16" | "fp32"
    (resolved per modality, since a bundle may lack e.g. an int8 text graph; with "auto" it
    follows the provider a session really got, so CUDA failing to start means int8 on the
    CPU); ``threads``: intra-op threads, the same for all three sessions (None:
    ``sessions.default_threads()``); ``spinning``: let ORT's threads spin-wait between runs
    (off: an app's idle CPU stays idle); ``providers``, ``provider_options``,
    ``session_options``: passed to ONNX Runtime as given, for an app that names its own
    execution providers (CoreML, NNAPI, DirectML, OpenVINO) or thread pool (see
    ``sessions.SessionSettings``); ``selfcheck``: run each graph's golden input the first
    time it is opened on this machine (None: on unless ``MANGA_MUSIC_SELFCHECK=0``; see
    ``runtime.selfcheck``), with passes remembered under ``cache_dir`` (None:
    ``$MANGA_MUSIC_CACHE`` or the user cache); ``span``: embed a long track's windows from
    one pass of the audio trunk when the bundle has one (``runtime.audio_span``), checking
    each track against the per-window graph. A demo bundle is noted once per process.
    """

    def __init__(self, bundle: Bundle | str | Path | None = None, device: str = "auto",
                 precision: str = "auto", threads: int | None = None, strict_device: bool = False,
                 selfcheck: bool | None = None, cache_dir: str | Path | None = None, *,
                 providers: Sequence[Any] | None = None, provider_options: Sequence[dict] | None = None,
                 session_options: Any = None, spinning: bool = False, span: bool = True):
        from .defaults import note_if_demo
        from .selfcheck import selfcheck_enabled

        self.bundle = load_bundle(bundle)
        self.settings = SessionSettings(device, threads, spinning, providers, provider_options, session_options,
                                        strict_device)
        if providers is None:
            self.device: DeviceChoice = resolve_device(device, strict=strict_device)
        else:
            first = provider_name(providers[0])
            self.device = DeviceChoice(device, precision_device(first))
        # What "auto" precision is chosen for: the device planned, until a session says otherwise.
        self._precision_device = self.device.device
        self.requested_precision = precision
        self.threads = None if session_options is not None else self.settings.intra_op_threads
        self.strict_device = strict_device
        note_if_demo(self.bundle)
        self.selfcheck = selfcheck_enabled(selfcheck)
        self.cache_dir = cache_dir
        self.selfchecks: dict[str, Any] = {}  # modality -> SelfCheckResult of the graph in use
        # One-pass track embedding (runtime.audio_span): on when the bundle has it; the
        # counts say how often it was used and how well it agreed with per-window.
        self.span = span
        self._span: tuple[LoadedEncoder, LoadedEncoder] | bool | None = None
        self.span_stats: dict[str, Any] = {"tracks": 0, "span": 0, "cosines": []}
        self._loaded: dict[str, LoadedEncoder] = {}
        self._tokenizer = None

    # -- facts -------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.bundle.embed_dim

    @property
    def loaded(self) -> tuple[str, ...]:
        """Modalities whose session exists (for tests and diagnostics)."""
        return tuple(sorted(self._loaded))

    def precision(self, modality: str) -> PrecisionChoice:
        return self.bundle.choose_precision(modality, self.requested_precision, self._precision_device)

    def encoder(self, modality: str) -> LoadedEncoder:
        """The session for ``modality``, created (sha256-checked, IO-checked, self-checked)
        on first use."""
        enc = self._loaded.get(modality)
        if enc is None:
            enc = self._loaded[modality] = self._open(modality)
        return enc

    def _open(self, modality: str) -> LoadedEncoder:
        choice = self.precision(modality)
        loaded = self._session(modality, choice.precision)
        really = precision_device(loaded.provider)
        if really != self._precision_device:
            # The provider planned for did not start (onnxruntime-gpu installed, CUDA failing):
            # the precision follows the provider in use, and later sessions go straight to it.
            self._precision_device = really
            self.device = DeviceChoice(self.device.requested, really)
            if self.settings.providers is None:
                self.settings = replace(self.settings, device=really)
            if self.requested_precision == "auto":
                choice = self.precision(modality)
                if choice.precision != loaded.encoder.precision:
                    loaded = self._session(modality, choice.precision)
        if choice.note:
            log.warning(choice.note)
        return self._checked(loaded)

    def _session(self, modality: str, precision: str) -> LoadedEncoder:
        sess, provider, entry = self.bundle.open_session(modality, precision, self.settings, cache_dir=self.cache_dir)
        return LoadedEncoder(modality, entry, provider, sess)

    def _checked(self, loaded: LoadedEncoder) -> LoadedEncoder:
        """``loaded`` once its graph passes the self-check here; else the fp32 graph, or an error."""
        modality, entry, provider = loaded.modality, loaded.encoder, loaded.provider
        precision = entry.precision
        if not self.selfcheck:
            return loaded
        from .cpu import cpu_info
        from .selfcheck import check_graph

        result = check_graph(loaded.run, self.bundle.manifest, entry, provider, self.cache_dir)
        if result is None:
            log.info("%s: the bundle has no golden input for %s (schema %d); not self-checked", entry.file, modality,
                     self.bundle.manifest.schema_version)
            return loaded
        self.selfchecks[modality] = result
        if result.passed:
            return loaded
        why = (f"{entry.file} fails its self-check on this machine: golden-input cosine {result.cosine:.4f} "
               f"is below its floor {result.floor:.4f} ({cpu_info().model}, {cpu_info().int8_class}, {provider})")
        if precision != "fp32" and "fp32" in self.bundle.manifest.precisions(modality):
            log.warning(f"{why}; using the bundle's fp32 {modality} graph instead")
            return self._checked(self._session(modality, "fp32"))
        raise BundleError(f"{why}; the bundle has no fp32 {modality} graph to fall back to "
                          "(re-export it, or skip the check with --no-selfcheck / MANGA_MUSIC_SELFCHECK=0)")

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.dim), dtype=np.float32)

    # -- images --------------------------------------------------------------------------
    def _image_rows(self, items: Sequence[Any], mode: str | None) -> Iterator[tuple[int, np.ndarray]]:
        from .image_preprocess import preprocess_image

        cfg = self.bundle.manifest.image
        for i, item in enumerate(items):
            if isinstance(item, np.ndarray) and item.dtype != np.uint8:
                # Already preprocessed pixels ([3,S,S] or tiles [T,3,S,S]): used as given.
                pixels = np.asarray(item, dtype=np.float32)
            else:
                pixels = preprocess_image(item, cfg, mode)
            if pixels.shape[-3:] != (3, cfg.size, cfg.size):
                raise InputError(f"item {i}: pixels must be [3, {cfg.size}, {cfg.size}], got {pixels.shape}")
            for row in pixels.reshape(-1, 3, cfg.size, cfg.size):
                yield i, row

    def embed_images(self, items: Sequence[Any], mode: str | None = None, batch_size: int = 8) -> np.ndarray:
        """Pages (paths, bytes, PIL images, uint8 arrays, or float [3,S,S] pixels) -> [N, D].

        One page on its own (not in a list) gives [1, D]: ``embed_images(page_array)`` with a
        HxWx3 uint8 array is one page, not a list of its pixel rows.

        ``mode``: "center_crop" (the paper's, default from the manifest), "letterbox"
        (whole page), or "tiles" (square tiles along the long side, their embeddings averaged).
        """
        if _is_single(items):
            items = [items]
        items = list(items)
        if not items:
            return self._empty()
        enc = self.encoder("image")
        sums = np.zeros((len(items), self.dim), dtype=np.float32)
        for batch in batched(self._image_rows(items, mode), batch_size):
            idx = np.fromiter((i for i, _ in batch), dtype=np.int64, count=len(batch))
            emb = l2_normalise(enc.run(np.stack([row for _, row in batch])))
            # Tiles of one page add up; a single-crop page adds one unit vector.
            np.add.at(sums, idx, emb)
        return l2_normalise(sums)

    # -- text ------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from .tokenizer import Tokenizer

            self._tokenizer = Tokenizer.from_config(self.bundle.manifest.text, self.bundle.dir)
        return self._tokenizer

    def embed_texts(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Strings -> [N, D] through the CLIP tokenizer and the text graph."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            return self._empty()
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"text {i} is a {type(t).__name__}, not a string")
        enc = self.encoder("text")
        out = [l2_normalise(enc.run(self._trim(enc, self.tokenizer(batch))))
               for batch in batched(texts, batch_size)]
        return np.concatenate(out)

    @staticmethod
    def _trim(enc: "LoadedEncoder", tokens: np.ndarray) -> np.ndarray:
        """Cut the token matrix after the batch's last end token when the graph takes any
        length. The tower reads each row at its end token under a causal mask, so the
        positions after it never reach the output: a label prompt runs 5-12 positions
        instead of 77. A graph with a fixed length (schema-1 bundles) gets all of them."""
        if isinstance(enc.encoder.inputs[0].shape[1], int) or tokens.shape[1] == 0:
            return tokens
        # The end token is the largest id, so argmax finds it (as the tower itself does).
        return tokens[:, : int(tokens.argmax(axis=1).max()) + 1]

    # -- audio -----------------------------------------------------------------------------
    def load_wave(self, src: Any) -> np.ndarray:
        """A path (decoded, mixed to mono, resampled) or a mono float array already at the
        manifest's rate, in [-1, 1] -> float32 [T]."""
        from .audio_preprocess import load_audio

        if isinstance(src, (str, Path)):
            return load_audio(src, self.bundle.manifest.audio.sample_rate)
        wave = np.asarray(src, dtype=np.float32)
        if wave.ndim != 1:
            raise InputError(f"an audio array must be mono [T], got shape {wave.shape}")
        if wave.size == 0:
            raise InputError("audio array is empty")
        if not np.all(np.isfinite(wave)):
            raise InputError("audio array holds NaN or infinite samples")
        return wave

    def _window_batches(self, wave: np.ndarray, starts: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
        from .audio_preprocess import windows

        cfg = self.bundle.manifest.audio
        win = int(round(cfg.window_seconds * cfg.sample_rate))
        if wave.shape[0] <= win:
            # One (possibly padded) short window: audio_preprocess owns that rule.
            if len(starts):
                yield windows(wave, cfg)[0]
            return
        # Long track: slice windows batch by batch instead of materialising all of them
        # (window/hop times the track's memory); every window has the same length here.
        for batch in batched(starts, batch_size):
            yield np.stack([wave[s:s + win] for s in batch])

    def embed_windows(self, wave: np.ndarray, batch_size: int = 8,
                      floor_dbfs: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Window embeddings [W, D] and start seconds [W] of one mono waveform.

        With ``floor_dbfs``, windows whose RMS level is below it are skipped (not embedded,
        not returned); W may then be 0. A long track is embedded in one pass of the audio
        trunk when the bundle has one (``runtime.audio_span``), else window by window."""
        from .audio_preprocess import window_loudness_dbfs, window_starts

        cfg = self.bundle.manifest.audio
        starts = window_starts(wave.shape[0], cfg)
        win = int(round(cfg.window_seconds * cfg.sample_rate))
        if floor_dbfs is not None and len(starts):
            starts = starts[window_loudness_dbfs(wave, starts, win) >= floor_dbfs]
        if not len(starts):
            return self._empty(), np.zeros(0, np.float64)
        enc = self.encoder("audio")
        embs = self._span_windows(enc, wave, starts, win) if len(starts) >= SPAN_MIN_WINDOWS else None
        if embs is None:
            embs = np.concatenate([l2_normalise(enc.run(b)) for b in self._window_batches(wave, starts, batch_size)])
        return embs, starts.astype(np.float64) / cfg.sample_rate

    # -- audio: a whole track in one pass -------------------------------------------------
    def _span_pair(self) -> tuple[LoadedEncoder, LoadedEncoder] | None:
        """The audio trunk and head at the audio encoder's precision, opened and self-checked
        once (as a pair) on first use; None when the bundle has none or span is off."""
        if self._span is None:
            self._span = False
            m = self.bundle.manifest
            precision = self.encoder("audio").encoder.precision
            heads = m.precisions("audio", "head")
            # The head is small and usually fp32 for every trunk precision.
            head_precision = precision if precision in heads else "fp32"
            if self.span and m.audio_span is not None and precision in m.precisions("audio", "trunk") \
                    and head_precision in heads:
                trunk = self._part_session("trunk", precision)
                head = self._part_session("head", head_precision)
                if self._pair_checked(trunk, head):
                    self._span = (trunk, head)
        return self._span or None

    def _part_session(self, part: str, precision: str) -> LoadedEncoder:
        sess, provider, entry = self.bundle.open_session("audio", precision, self.settings, part=part,
                                                         cache_dir=self.cache_dir)
        return LoadedEncoder("audio", entry, provider, sess)

    def _pair_checked(self, trunk: LoadedEncoder, head: LoadedEncoder) -> bool:
        """The golden audio through trunk then head; a failure costs only the speed-up."""
        if not self.selfcheck:
            return True
        from .selfcheck import check_graph

        result = check_graph(lambda x: head.run(trunk.run(x)), self.bundle.manifest, trunk.encoder, trunk.provider,
                             self.cache_dir)
        if result is not None and not result.passed:
            log.warning("%s + %s fail their self-check on this machine (golden-input cosine %.4f < %.4f); "
                        "embedding audio window by window", trunk.encoder.file, head.encoder.file, result.cosine,
                        result.floor)
            return False
        return True

    def _span_windows(self, enc: LoadedEncoder, wave: np.ndarray, starts: np.ndarray, win: int) -> np.ndarray | None:
        """Unit window embeddings from one trunk pass, or None to use the per-window path:
        no trunk in the bundle, or the track's probe windows disagree with the per-window
        graph (then this track is embedded window by window, and after ``SPAN_TRIAL``
        tracks of which most disagreed, every later one too)."""
        from .audio_span import SpanGeometry, agreement, span_embeddings

        pair = self._span_pair()
        if pair is None:
            return None
        stats = self.span_stats
        if stats["tracks"] >= SPAN_TRIAL and stats["span"] * 2 < stats["tracks"]:
            return None
        trunk, head = pair
        m = self.bundle.manifest
        geo = SpanGeometry(m.audio_span.samples_per_step, m.audio_span.window_steps, m.audio_span.min_cosine)
        emb = span_embeddings(trunk.run, head.run, wave, starts, win, m.audio.sample_rate, geo)
        # Probe: the first and the middle window, also through the per-window graph.
        probe = np.unique([0, len(starts) // 2])
        exact = enc.run(np.stack([wave[s:s + win] for s in starts[probe]]))
        cos = agreement(emb[probe], exact)
        stats["tracks"] += 1
        stats["cosines"].extend(float(c) for c in cos)
        if cos.min() < geo.min_cosine:
            if stats["tracks"] == SPAN_TRIAL and stats["span"] * 2 < stats["tracks"]:
                log.warning("audio: one-pass embedding disagrees with the per-window graph on most tracks "
                            "(cosine below %.3f); embedding window by window from here on", geo.min_cosine)
            return None
        stats["span"] += 1
        emb[probe] = exact
        return l2_normalise(emb)

    def embed_track(self, src: Any, batch_size: int = 8, floor_dbfs: float | None = None,
                    name: str | None = None) -> TrackEmbedding:
        """A track (path or waveform) -> its audible windows' embeddings, their starts, and
        the pooled embedding (normalised mean of the windows).

        Windows quieter than ``floor_dbfs`` (default ``LOUDNESS_FLOOR_DBFS``) are skipped; a
        track with no window above it raises ``SilentAudioError``."""
        from .audio_preprocess import LOUDNESS_FLOOR_DBFS

        floor = LOUDNESS_FLOOR_DBFS if floor_dbfs is None else floor_dbfs
        wave = self.load_wave(src)
        win_embs, starts = self.embed_windows(wave, batch_size, floor_dbfs=floor)
        if not len(starts):
            window = self.bundle.manifest.audio.window_seconds
            raise SilentAudioError(f"{name or _describe_audio(src)}: silent (no {window:g} s "
                                   f"window louder than {floor:g} dBFS RMS)")
        pooled = l2_normalise(win_embs.mean(axis=0, keepdims=True))[0]
        duration = wave.shape[0] / self.bundle.manifest.audio.sample_rate
        return TrackEmbedding(win_embs, starts, pooled, float(duration))

    def embed_audio(self, items: Sequence[Any], batch_size: int = 8) -> np.ndarray:
        """Tracks (paths or mono float arrays at the manifest rate) -> pooled [N, D]."""
        if isinstance(items, (str, Path)) or (isinstance(items, np.ndarray) and items.ndim == 1):
            items = [items]
        items = list(items)
        if not items:
            return self._empty()
        return np.stack([self.embed_track(x, batch_size).pooled for x in items])
