"""CLIP's text tower: a causal pre-norm transformer read out at the end token.

Its parameters sit at the top level of the published state dict (`token_embedding`,
`positional_embedding`, `transformer.`, `ln_final`, `text_projection`), so `AudioCLIP`
registers them directly and `TextTower` is the stand-alone encoder module sharing them.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import TextConfig
from .layers import LayerNorm, QuickGELU, multi_head_attention


class SelfAttention(nn.Module):
    """Parameter names as torch.nn.MultiheadAttention (in_proj_*, out_proj), plain ops inside."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        self.heads = heads
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        return self.out_proj(multi_head_attention(q, k, v, self.heads, mask))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(width * 4, width))
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class TextTower(nn.Module):
    """Text encoder: token ids [B, context] int64 -> embedding [B, embed_dim]."""

    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads)
        self.ln_final = LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=cfg.width ** -0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        # Additive causal mask (position i sees positions <= i), built here rather than kept
        # as a buffer because AudioCLIP shares this tower's parameters without owning it.
        mask = torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
        x = self.transformer(x, mask)
        x = self.ln_final(x)
        # The end token has the largest id (49407), so argmax finds its position.
        eot = tokens.argmax(dim=-1)
        x = torch.gather(x, 1, eot[:, None, None].expand(-1, 1, x.shape[-1])).squeeze(1)
        return x @ self.text_projection
