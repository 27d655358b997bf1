"""The FBSP front end of ESResNeXt-fbsp: framing, window, and the learned complex filterbank.

FBSP ("Frequency B-Spline") replaces the STFT's fixed DFT with 1025 learned complex filters,
each a sinc window raised to a learned power m, of learned bandwidth fb, around a learned
centre frequency fc. At m=0, fb=1, fc=0..1024 it is a scaled DFT. The filter weights depend
only on the three parameter vectors, so `LinearFBSP.weights()` can be computed once and
frozen into an exported graph.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


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


class LinearFBSP(nn.Module):
    """Learned complex filterbank: frames [..., n_fft] -> (re, im) [..., out_features] each."""

    def __init__(self, out_features: int):
        super().__init__()
        self.m = nn.Parameter(torch.zeros(out_features))
        self.fb = nn.Parameter(torch.ones(out_features))
        self.fc = nn.Parameter(torch.arange(out_features, dtype=torch.float32))
        # The published model has the bias switched off but keeps an empty parameter for it.
        self.bias = nn.Parameter(torch.empty(0))
        self.eps = 1e-8

    def weights(self, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Real and imaginary weight matrices [out_features, in_features], normalised by sqrt(n).

        The arithmetic follows the reference's order step by step: with random weights the
        audio trunk amplifies float32 rounding differences in the dB spectrogram, so
        matching the published outputs needs the same rounding, not just the same maths.
        """
        t = math.pi * torch.linspace(-1.0, 1.0, in_features, dtype=self.m.dtype, device=self.m.device)[None, :] + self.eps
        m, fb, fc = self.m[:, None], self.fb[:, None], self.fc[:, None]
        k_re, k_im = torch.cos(fc * t), -torch.sin(fc * t)
        arg = fb * t / (m + self.eps)
        win = torch.where(arg == 0, torch.ones_like(arg), torch.sin(arg) / arg)  # unnormalised sinc
        # A real number raised to a real power, taken as complex: |w|^m with phase m * angle(w).
        magnitude_sq = win ** 2
        phase = m * torch.atan2(torch.zeros_like(win), win)
        magnitude = (magnitude_sq ** 0.5) ** 2  # |w|^2 as the reference rounds it
        w_mag = magnitude ** (0.5 * m)
        w_re, w_im = w_mag * torch.cos(phase), w_mag * torch.sin(phase)
        scale = fb.sqrt()
        re = scale * (w_re * k_re - w_im * k_im)
        im = scale * (w_re * k_im + w_im * k_re)
        norm = in_features ** 0.5
        return re / norm, im / norm

    def regulariser(self, in_features: int) -> torch.Tensor:
        """Mean squared difference between 1 and each filter's L2 norm (the reference's penalty)."""
        re, im = self.weights(in_features)
        norms = torch.sqrt((re ** 2 + im ** 2).sum(dim=-1))
        return ((1.0 - norms) ** 2).mean()
