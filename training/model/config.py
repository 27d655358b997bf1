"""Sizes of the AudioCLIP towers, in one frozen config object.

`AudioCLIPConfig.full()` is the published model (CLIP RN50 + ESResNeXt-50 32x4d, 1024-d);
`AudioCLIPConfig.tiny()` keeps every structural feature at toy widths so tests and the
demo model run in seconds. `from_state_dict` reads the sizes off a checkpoint, so any
checkpoint of this architecture (published, fine-tuned or demo) can be rebuilt.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class ImageConfig:
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64  # stem output width; stage widths are width * (1, 2, 4, 8), x4 out
    heads: int = 32  # attention-pool heads
    resolution: int = 224


@dataclass(frozen=True)
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12


@dataclass(frozen=True)
class AudioConfig:
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    stem_channels: int = 64
    base_planes: int = 64  # planes of stage 1; stages double it
    groups: int = 32
    width_per_group: int = 4
    sample_rate: int = 44100
    n_fft: int = 2048
    hop_length: int = 561
    win_length: int = 1654
    bands: int = 3  # spectrogram bands stacked as input channels


@dataclass(frozen=True)
class AudioCLIPConfig:
    embed_dim: int = 1024
    image: ImageConfig = field(default_factory=ImageConfig)
    text: TextConfig = field(default_factory=TextConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)

    @classmethod
    def full(cls) -> "AudioCLIPConfig":
        return cls()

    @classmethod
    def tiny(cls, embed_dim: int = 64, resolution: int = 64) -> "AudioCLIPConfig":
        return cls(
            embed_dim=embed_dim,
            image=ImageConfig(layers=(1, 1, 1, 1), width=8, heads=2, resolution=resolution),
            text=TextConfig(width=32, heads=2, layers=2),
            audio=AudioConfig(layers=(1, 1, 1, 1), stem_channels=16, base_planes=16, groups=4, width_per_group=16),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "AudioCLIPConfig":
        img, txt, aud = dict(d["image"]), dict(d["text"]), dict(d["audio"])
        img["layers"] = tuple(img["layers"])
        aud["layers"] = tuple(aud["layers"])
        return cls(int(d["embed_dim"]), ImageConfig(**img), TextConfig(**txt), AudioConfig(**aud))

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, "object"]) -> "AudioCLIPConfig":
        """Infer sizes from a full AudioCLIP state dict (CLIP's conventions for heads)."""
        def count(prefix: str) -> int:
            pat = re.compile(re.escape(prefix) + r"(\d+)\.")
            return len({m.group(1) for k in sd for m in [pat.match(k)] if m})

        shape = lambda k: tuple(sd[k].shape)  # noqa: E731
        embed_dim = shape("text_projection")[1]
        v_width = shape("visual.layer1.0.conv1.weight")[0]
        grid = round((shape("visual.attnpool.positional_embedding")[0] - 1) ** 0.5)
        image = ImageConfig(
            layers=tuple(count(f"visual.layer{i}.") for i in range(1, 5)),
            width=v_width, heads=max(1, v_width * 32 // 64), resolution=grid * 32,
        )
        t_width = shape("ln_final.weight")[0]
        text = TextConfig(
            context_length=shape("positional_embedding")[0], vocab_size=shape("token_embedding.weight")[0],
            width=t_width, heads=max(1, t_width // 64), layers=count("transformer.resblocks."),
        )
        a_width = shape("audio.layer1.0.conv1.weight")[0]
        base_planes = shape("audio.layer1.0.conv3.weight")[0] // 4
        groups = a_width // shape("audio.layer1.0.conv2.weight")[1]
        audio = AudioConfig(
            layers=tuple(count(f"audio.layer{i}.") for i in range(1, 5)),
            stem_channels=shape("audio.conv1.weight")[0], base_planes=base_planes, groups=groups,
            width_per_group=a_width // groups * 64 // base_planes,
            n_fft=2 * (shape("audio.fbsp.m")[0] - 1),
            bands=shape("audio.conv1.weight")[1],
        )
        return cls(embed_dim, image, text, audio)
