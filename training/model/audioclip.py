"""AudioCLIP: CLIP's image and text towers plus the ESResNeXt-fbsp audio tower, one space.

Parameter names are exactly those of the published checkpoints. Each tower is also an
nn.Module of its own with a plain tensor-in, tensor-out forward (`model.visual`,
`model.text`, `model.audio`), which is what the export turns into one ONNX graph each.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .audio_tower import ESResNeXtFBSP
from .config import AudioCLIPConfig
from .image_tower import ModifiedResNet
from .text_tower import TextTower

LOGIT_SCALE_MIN, LOGIT_SCALE_MAX = 1.0, 100.0


class AudioCLIP(nn.Module):
    def __init__(self, config: AudioCLIPConfig | None = None):
        super().__init__()
        self.config = config = config or AudioCLIPConfig.full()
        text = TextTower(config.text, config.embed_dim)
        # Registered at the top level to keep the published key names; `self.text` shares them.
        self.positional_embedding = text.positional_embedding
        self.text_projection = text.text_projection
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.logit_scale_ai = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_scale_at = nn.Parameter(torch.tensor(math.log(10.0)))
        self.visual = ModifiedResNet(config.image, config.embed_dim)
        self.transformer = text.transformer
        self.token_embedding = text.token_embedding
        self.ln_final = text.ln_final
        self.audio = ESResNeXtFBSP(config.audio, config.embed_dim)
        self._text = (text,)  # a tuple so nn.Module does not register it a second time

    @property
    def text(self) -> TextTower:
        return self._text[0]

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text(tokens)

    def encode_audio(self, waveform: torch.Tensor) -> torch.Tensor:
        """waveform [B, T] at 44.1 kHz in the int16 value range (a [-1, 1] signal x 32768)."""
        return self.audio(waveform)

    def logit_scales(self) -> dict[str, torch.Tensor]:
        """exp of each learned temperature, clamped to [1, 100] as the reference does."""
        f = lambda p: p.exp().clamp(LOGIT_SCALE_MIN, LOGIT_SCALE_MAX)  # noqa: E731
        return {"image_text": f(self.logit_scale), "audio_image": f(self.logit_scale_ai),
                "audio_text": f(self.logit_scale_at)}
