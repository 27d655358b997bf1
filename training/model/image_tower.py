"""CLIP's image tower: the "ModifiedResNet" (RN50 at full size) with attention pooling.

State-dict names match the published checkpoints under the `visual.` prefix.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .config import ImageConfig
from .layers import multi_head_attention


class Bottleneck(nn.Module):
    """Anti-aliased bottleneck: a stride is an average pool after the 3x3 conv, not a strided conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            # Named "-1", "0", "1" so the conv and norm keep the published keys downsample.0/.1.
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride) if stride > 1 else nn.Identity()),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.relu(out + identity)


class AttentionPool2d(nn.Module):
    """Mean token + positional embedding, one multi-head attention, first token out via c_proj."""

    def __init__(self, grid: int, width: int, heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, width) / width ** 0.5)
        self.k_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.c_proj = nn.Linear(width, output_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        # Only the first (mean) token's output is used, so only it needs to be a query.
        out = multi_head_attention(self.q_proj(x[:, :1]), self.k_proj(x), self.v_proj(x), self.heads)
        return self.c_proj(out[:, 0])


class ModifiedResNet(nn.Module):
    """Image encoder: pixels [B,3,R,R] (normalised) -> embedding [B, embed_dim]."""

    def __init__(self, cfg: ImageConfig, embed_dim: int):
        super().__init__()
        w = cfg.width
        self.conv1 = nn.Conv2d(3, w // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w // 2)
        self.conv2 = nn.Conv2d(w // 2, w // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w // 2)
        self.conv3 = nn.Conv2d(w // 2, w, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(w)
        self.avgpool = nn.AvgPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        self._inplanes = w
        self.layer1 = self._make_layer(w, cfg.layers[0])
        self.layer2 = self._make_layer(w * 2, cfg.layers[1], stride=2)
        self.layer3 = self._make_layer(w * 4, cfg.layers[2], stride=2)
        self.layer4 = self._make_layer(w * 8, cfg.layers[3], stride=2)
        self.attnpool = AttentionPool2d(cfg.resolution // 32, w * 32, cfg.heads, embed_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(self.conv1.weight.dtype)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)
