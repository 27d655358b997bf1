"""The FBSP front end of ESResNeXt-fbsp: framing, window, and the learned complex filterbank.

FBSP ("Frequency B-Spline") replaces the STFT's fixed DFT with 1025 learned complex filters,
each a sinc window raised to a learned power m, of learned bandwidth fb, around a learned
centre frequency fc. At m=0, fb=1, fc=0..1024 it is a scaled DFT. The filter weights depend
only on the three parameter vectors: an exported graph either stores the computed filters
(2 x 1025 x 2048 floats) or computes them from those 3 x 1025 numbers (`fbsp_weights`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

EPS = 1e-8  # the reference's guard against dividing by m = 0


def blackman_harris(length: int) -> np.ndarray:
    """Periodic 4-term Blackman-Harris window (scipy's get_window('blackmanharris', n, fftbins=True))."""
    a = (0.35875, 0.48829, 0.14128, 0.01168)
    n = np.arange(length, dtype=np.float64)
    x = 2.0 * np.pi * n / length  # periodic: divide by N, not N - 1
    return (a[0] - a[1] * np.cos(x) + a[2] * np.cos(2 * x) - a[3] * np.cos(3 * x)).astype(np.float32)


def frame_signal(x: torch.Tensor, frame_length: int, hop: int) -> torch.Tensor:
    """[B, T] -> [B, frames, frame_length], zero-padding (half, rounded down, in front) to fit exactly.

    Written with integer ops that also work on symbolic sizes, so an exported graph keeps a
    dynamic length axis.
    """
    t = x.shape[-1]
    n = 1 + (torch.sym_max(t, frame_length) - frame_length + hop - 1) // hop
    pad = (n - 1) * hop + frame_length - t
    left = pad // 2
    x = nn.functional.pad(x, (left, pad - left))
    return x.unfold(-1, frame_length, hop)


def fbsp_grid(in_features: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """The filters' time axis: pi * linspace(-1, 1, n) + eps, as a [1, n] row.

    Kept apart so an exported graph can carry this row as a constant: torch's linspace
    rounds its upper half differently from a Range-based one, and at |fc * t| up to ~3200 a
    one-ulp change in t moves cos(fc * t) by ~2e-4.
    """
    return math.pi * torch.linspace(-1.0, 1.0, in_features, dtype=dtype, device=device)[None, :] + EPS


def fbsp_weights(m: torch.Tensor, fb: torch.Tensor, fc: torch.Tensor, t: torch.Tensor,
                 eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """FBSP filters from their parameters ([out] each) on the grid ``t`` ([1, in]).

    The arithmetic follows the reference's order step by step: with random weights the
    audio trunk amplifies float32 rounding differences in the dB spectrogram, so matching
    the published outputs needs the same rounding, not just the same maths. Every op here
    also has a direct ONNX counterpart, so the exported audio graph can compute the filters
    from these 3 x out numbers instead of storing 2 x out x in of them.
    """
    m, fb, fc = m[:, None], fb[:, None], fc[:, None]
    k_re, k_im = torch.cos(fc * t), -torch.sin(fc * t)
    arg = fb * t / (m + eps)
    win = torch.where(arg == 0, torch.ones_like(arg), torch.sin(arg) / arg)  # unnormalised sinc
    # A real number raised to a real power, taken as complex: |w|^m with phase m * angle(w).
    # angle(w) of a real w is pi where w < 0, else 0: the reference's atan2(0, w), written
    # with Where because ONNX has no Atan2 and the exporter's decomposition of it gives -pi
    # there (torch 2.13), which flips the sign of every such filter's imaginary part.
    magnitude_sq = win ** 2
    phase = m * torch.where(win < 0, torch.full_like(win, math.pi), torch.zeros_like(win))
    magnitude = (magnitude_sq ** 0.5) ** 2  # |w|^2 as the reference rounds it
    w_mag = magnitude ** (0.5 * m)
    w_re, w_im = w_mag * torch.cos(phase), w_mag * torch.sin(phase)
    scale = fb.sqrt()
    re = scale * (w_re * k_re - w_im * k_im)
    im = scale * (w_re * k_im + w_im * k_re)
    norm = t.shape[-1] ** 0.5
    return re / norm, im / norm


class LinearFBSP(nn.Module):
    """Learned complex filterbank: frames [..., n_fft] -> (re, im) [..., out_features] each."""

    def __init__(self, out_features: int):
        super().__init__()
        self.m = nn.Parameter(torch.zeros(out_features))
        self.fb = nn.Parameter(torch.ones(out_features))
        self.fc = nn.Parameter(torch.arange(out_features, dtype=torch.float32))
        # The published model has the bias switched off but keeps an empty parameter for it.
        self.bias = nn.Parameter(torch.empty(0))
        self.eps = EPS

    def weights(self, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Real and imaginary weight matrices [out_features, in_features], normalised by sqrt(n)."""
        t = fbsp_grid(in_features, self.m.dtype, self.m.device)
        return fbsp_weights(self.m, self.fb, self.fc, t, self.eps)

    def regulariser(self, in_features: int) -> torch.Tensor:
        """Mean squared difference between 1 and each filter's L2 norm (the reference's penalty)."""
        re, im = self.weights(in_features)
        norms = torch.sqrt((re ** 2 + im ** 2).sum(dim=-1))
        return ((1.0 - norms) ** 2).mean()
