"""Small building blocks shared by the towers, written to export cleanly to ONNX.

Attention is spelled out with matmuls (no fused kernels) so the exported graphs hold plain
MatMul/Softmax nodes that quantisers and the fp16 converter understand.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class QuickGELU(nn.Module):
    """CLIP's GELU approximation x * sigmoid(1.702 x); the published weights were trained with it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype (as CLIP does), cast back after."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention over [B, L, W] tensors split into `heads` heads.

    Returns [B, Lq, W] (heads concatenated, before the output projection).
    """
    b, lq, w = q.shape
    lk = k.shape[1]
    hd = w // heads
    q = q.reshape(b, lq, heads, hd).transpose(1, 2) * (hd ** -0.5)
    k = k.reshape(b, lk, heads, hd).transpose(1, 2)
    v = v.reshape(b, lk, heads, hd).transpose(1, 2)
    scores = q @ k.transpose(-1, -2)
    if mask is not None:
        scores = scores + mask
    attn = F.softmax(scores.float(), dim=-1).to(v.dtype)
    return (attn @ v).transpose(1, 2).reshape(b, lq, w)
