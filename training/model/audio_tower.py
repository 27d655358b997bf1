"""ESResNeXt-fbsp, AudioCLIP's audio tower (state-dict names under the `audio.` prefix).

waveform (int16 value range) -> [-1, 1] -> frames x Blackman-Harris window -> FBSP power
spectrum in dB, its first 1023 bins stacked as 3 bands of 341 -> ResNeXt-50 32x4d with an
attention gate after every stage and after pooling -> fc -> embedding.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import AudioConfig
from .fbsp import LinearFBSP, blackman_harris, frame_signal

INT16_MIN, INT16_MAX = -32768.0, 32767.0


class ResNeXtBottleneck(nn.Module):
    """torchvision's ResNeXt bottleneck (stride on the grouped 3x3 conv)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, groups: int, width_per_group: int):
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * self.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class AttentionGate(nn.Module):
    """sigmoid(BN(pointwise(depthwise(adaptive_max_pool(stage input -> stage output size)))))."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int]):
        super().__init__()
        padding = (kernel[0] // 2, kernel[1] // 2)
        self.conv_depth = nn.Conv2d(in_channels, in_channels, kernel, padding=padding, groups=in_channels)
        self.conv_point = nn.Conv2d(in_channels, out_channels, 1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = F.adaptive_max_pool2d(x, size)
        return torch.sigmoid(self.bn(self.conv_point(self.conv_depth(x))))


class ESResNeXtFBSP(nn.Module):
    """Audio encoder: waveform [B, T] in the int16 value range -> embedding [B, embed_dim]."""

    def __init__(self, cfg: AudioConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.from_numpy(blackman_harris(cfg.win_length)))
        self.fbsp = LinearFBSP(cfg.n_fft // 2 + 1)
        c = cfg.stem_channels
        self.conv1 = nn.Conv2d(cfg.bands, c, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._inplanes = c
        p = cfg.base_planes
        self.layer1 = self._make_layer(p, cfg.layers[0], 1)
        self.layer2 = self._make_layer(p * 2, cfg.layers[1], 2)
        self.layer3 = self._make_layer(p * 4, cfg.layers[2], 2)
        self.layer4 = self._make_layer(p * 8, cfg.layers[3], 2)
        x4 = ResNeXtBottleneck.expansion
        self.att1 = AttentionGate(c, p * x4, (3, 1))
        self.att2 = AttentionGate(p * x4, p * 2 * x4, (1, 5))
        self.att3 = AttentionGate(p * 2 * x4, p * 4 * x4, (3, 1))
        self.att4 = AttentionGate(p * 4 * x4, p * 8 * x4, (1, 5))
        self.att5 = AttentionGate(p * 8 * x4, p * 8 * x4, (3, 5))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(p * 8 * x4, embed_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        g, wpg = self.cfg.groups, self.cfg.width_per_group
        layers = [ResNeXtBottleneck(self._inplanes, planes, stride, g, wpg)]
        self._inplanes = planes * ResNeXtBottleneck.expansion
        layers += [ResNeXtBottleneck(self._inplanes, planes, 1, g, wpg) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        """int16-range waveform [B, T] -> dB power spectrogram [B, bands, bins/bands, frames]."""
        cfg = self.cfg
        x = ((waveform - INT16_MIN) * 2.0) / (INT16_MAX - INT16_MIN) - 1.0
        frames = frame_signal(x, cfg.win_length, cfg.hop_length) * self.window  # [B, N, L]
        left = (cfg.n_fft - cfg.win_length) // 2
        frames = F.pad(frames, (left, cfg.n_fft - cfg.win_length - left))
        re_w, im_w = self.fbsp.weights(cfg.n_fft)
        power = F.linear(frames, re_w) ** 2 + F.linear(frames, im_w) ** 2  # [B, N, bins]
        power = torch.where(power > 0, power, torch.full_like(power, 1e-18))
        db = torch.log10(power) * 10.0
        per_band = db.shape[-1] // cfg.bands
        db = db[..., : cfg.bands * per_band].transpose(1, 2)  # [B, bins, N]
        return db.reshape(db.shape[0], cfg.bands, per_band, db.shape[-1])

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.embed_spectrogram(self.spectrogram(waveform.to(self.window.dtype)))

    def embed_spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk alone: dB spectrogram [B, bands, bins/bands, frames] -> embedding.

        Split out so training with a frozen front end can compute spectrograms once.
        """
        return self.pool(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """dB spectrogram -> the last stage's gated feature map [B, C, bins/32, frames/32].

        Everything up to here is local in time (convolutions, and gates that pool only within
        each stride), so a long clip's map holds, step by step, what each window's own map
        holds away from its edges: the runtime embeds a whole track at once and pools this
        map per window (``pool``) instead of running every overlapping window.
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for layer, gate in ((self.layer1, self.att1), (self.layer2, self.att2),
                            (self.layer3, self.att3), (self.layer4, self.att4)):
            y = layer(x)
            x = y * gate(x, y.shape[-2:])
        return x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """A feature map (one window's, or a slice of a track's) -> embedding: global average,
        the last attention gate on its global maximum, then fc."""
        y = self.avgpool(x)
        x = y * self.att5(x, y.shape[-2:])
        return self.fc(torch.flatten(x, 1))
