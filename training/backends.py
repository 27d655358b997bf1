"""Embedding backends: the same evaluation on a PyTorch model or on an exported bundle.

`EmbeddingBackend` is what training.evaluate needs: three ``embed_*`` methods returning
L2-normalised float32 [N, D] (an empty list gives (0, D)) and the model's three logit
scales (exp'ed and clamped, as the bundle manifest stores them). Inputs are what a user
has: pages as paths or PIL images, texts as strings, music as mono float32 waveforms in
[-1, 1] at 44.1 kHz.

- `TorchBackend(model)`: preprocesses pages with CLIP's transform at the model's
  resolution (the training evaluation transform), tokenizes with the runtime tokenizer,
  scales audio to the int16 range the tower expects; audio longer than one window is cut
  into the runtime's windows (runtime.audio_preprocess) and pooled like the runtime does
  (normalised mean of normalised window embeddings), so both backends see the same thing.
- `BundleBackend(path)`: runtime.encoders.Encoders on an exported bundle (ONNX Runtime,
  any precision), imported lazily so training does not need the runtime's extra packages
  until a bundle is evaluated.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from runtime.manifest import AudioPreprocess, ImagePreprocess


@runtime_checkable
class EmbeddingBackend(Protocol):
    name: str

    @property
    def embed_dim(self) -> int: ...

    @property
    def logit_scales(self) -> dict[str, float]:
        """{"image_text", "audio_text", "audio_image"}: exp'ed, clamped to [1, 100]."""
        ...

    def embed_images(self, items: Sequence[Any]) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_audio(self, waveforms: Sequence[np.ndarray]) -> np.ndarray: ...


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


class TorchBackend:
    """A PyTorch AudioCLIP (e.g. `load_model(path).model`) behind the backend interface."""

    def __init__(self, model, device: str = "cpu", batch_size: int = 16, name: str = "torch",
                 audio: AudioPreprocess = AudioPreprocess()):
        import torch

        self._torch = torch
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.name = name
        self.audio = audio
        self.image = ImagePreprocess(size=model.config.image.resolution)
        self._tokenizer = None

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.embed_dim)

    @property
    def logit_scales(self) -> dict[str, float]:
        with self._torch.no_grad():
            return {k: float(v) for k, v in self.model.logit_scales().items()}

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.embed_dim), dtype=np.float32)

    def _run(self, fn, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.no_grad():
            return fn(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()

    def embed_images(self, items: Sequence[Any]) -> np.ndarray:
        from training.data.augment import clip_preprocess
        from training.data.manga109 import load_page_image

        items = list(items)
        if not items:
            return self._empty()
        out = []
        for i in range(0, len(items), self.batch_size):
            pixels = []
            for item in items[i:i + self.batch_size]:
                img = item if hasattr(item, "convert") else load_page_image(item)
                pixels.append(clip_preprocess(img, self.image))
            out.append(self._run(self.model.encode_image, np.stack(pixels).astype(np.float32)))
        return _l2(np.concatenate(out))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return self._empty()
        if self._tokenizer is None:
            from runtime.tokenizer import default_tokenizer

            self._tokenizer = default_tokenizer()
        out = [self._run(self.model.encode_text, self._tokenizer(texts[i:i + self.batch_size]))
               for i in range(0, len(texts), self.batch_size)]
        return _l2(np.concatenate(out))

    def embed_audio(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        from runtime.audio_preprocess import windows

        waveforms = list(waveforms)
        if not waveforms:
            return self._empty()
        # Windows of every clip, grouped by length so equal-length windows share a batch.
        owners: list[int] = []
        rows: list[np.ndarray] = []
        for i, w in enumerate(waveforms):
            w = np.asarray(w, dtype=np.float32).reshape(-1)
            wins, _ = windows(w, self.audio)
            owners.extend([i] * len(wins))
            rows.extend(wins)
        scale = np.float32(self.audio.int16_scale)
        embs = np.zeros((len(rows), self.embed_dim), dtype=np.float32)
        by_len: dict[int, list[int]] = {}
        for r, row in enumerate(rows):
            by_len.setdefault(len(row), []).append(r)
        for idx in by_len.values():
            for j in range(0, len(idx), self.batch_size):
                chunk = idx[j:j + self.batch_size]
                batch = np.stack([rows[r] for r in chunk]) * scale
                embs[chunk] = _l2(self._run(self.model.encode_audio, batch))
        pooled = np.zeros((len(waveforms), self.embed_dim), dtype=np.float32)
        np.add.at(pooled, np.asarray(owners), embs)
        return _l2(pooled)


class BundleBackend:
    """An exported bundle, through the runtime's encoders (no torch involved)."""

    def __init__(self, bundle_path: str | Path, device: str = "cpu", precision: str = "auto",
                 threads: Optional[int] = None, batch_size: int = 8):
        from runtime.encoders import Encoders  # lazily: only bundle evaluation needs ONNX Runtime

        self.encoders = Encoders(bundle_path, device=device, precision=precision, threads=threads)
        self.batch_size = int(batch_size)
        self.name = f"bundle:{Path(bundle_path).name}"

    @property
    def embed_dim(self) -> int:
        return int(self.encoders.dim)

    @property
    def logit_scales(self) -> dict[str, float]:
        s = self.encoders.bundle.manifest.logit_scales
        return {"image_text": float(s.image_text), "audio_text": float(s.audio_text),
                "audio_image": float(s.audio_image)}

    def embed_images(self, items: Sequence[Any]) -> np.ndarray:
        items = [str(x) if isinstance(x, Path) else x for x in items]
        return self.encoders.embed_images(items, batch_size=self.batch_size)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoders.embed_texts(list(texts))

    def embed_audio(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        return self.encoders.embed_audio([np.asarray(w, dtype=np.float32).reshape(-1) for w in waveforms],
                                         batch_size=self.batch_size)


def open_backend(path: str | Path, device: str = "cpu", precision: str = "auto",
                 threads: Optional[int] = None) -> EmbeddingBackend:
    """A folder is a bundle; a file is a PyTorch checkpoint (any kind load_model reads)."""
    path = Path(path)
    if path.is_dir():
        return BundleBackend(path, device=device, precision=precision, threads=threads)
    from training.checkpoints import load_model

    if threads:
        import torch

        torch.set_num_threads(threads)
    loaded = load_model(path, device=device)
    return TorchBackend(loaded.model, device=device, name=f"checkpoint:{path.name}")


__all__ = ["BundleBackend", "EmbeddingBackend", "TorchBackend", "open_backend"]
