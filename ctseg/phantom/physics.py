"""What the scanner adds to the ideal tissue map: blur, partial volume, correlated noise, streaks.

CT noise is not white: filtered back-projection shapes it with a ramp rolled off by the reconstruction
kernel, so its noise power spectrum (NPS) rises from zero at the lowest frequencies to a peak and falls
again (Boedeker et al., Phys Med Biol 2007;52:4027-4046). The noise here is white noise filtered to
that NPS shape, scaled to the patient's standard deviation.
"""
from __future__ import annotations

import numpy as np


def upsample(a: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resampling of a square image to size x size (pixel centres aligned)."""
    n = a.shape[0]
    if n == size:
        return a.astype(np.float32, copy=False)
    x = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
    i0 = np.minimum(np.floor(x).astype(int), n - 2)
    w = (x - i0).astype(np.float32)
    rows = a[i0] * (1 - w)[:, None] + a[i0 + 1] * w[:, None]
    return rows[:, i0] * (1 - w)[None, :] + rows[:, i0 + 1] * w[None, :]


class SmoothField:
    """A random smooth field in (u, v, t) with unit standard deviation: sums of plane waves."""

    def __init__(self, rng: np.random.Generator, waves: int, cycles: tuple[float, float]):
        angle = rng.uniform(0, 2 * np.pi, waves)
        freq = rng.uniform(*cycles, waves) * np.pi          # cycles across the field of view (width 2)
        self.ku, self.kv = freq * np.cos(angle), freq * np.sin(angle)
        self.kt = rng.uniform(-1, 1, waves) * freq
        self.phase = rng.uniform(0, 2 * np.pi, waves)
        self.scale = np.sqrt(2.0 / waves)

    def __call__(self, axis: np.ndarray, t: float) -> np.ndarray:
        out = np.zeros((len(axis), len(axis)), np.float32)
        for ku, kv, kt, ph in zip(self.ku, self.kv, self.kt, self.phase):
            # cos(a + b) = cos a cos b - sin a sin b keeps this to two outer products per wave
            a, b = ku * axis, kv * axis + kt * t + ph
            out += np.outer(np.cos(b), np.cos(a)) - np.outer(np.sin(b), np.sin(a))
        return out * self.scale


class Scanner:
    """One patient's scanner: in-plane blur (PSF), noise level and NPS shape, streak habit."""

    def __init__(self, rng: np.random.Generator, size: int, noise_hu: float):
        self.size, self.noise_hu = size, noise_hu
        self.psf_px = rng.uniform(0.5, 0.9)                       # PSF sigma in output pixels
        self.nps_peak = rng.uniform(0.07, 0.13)                   # NPS peak, cycles per output pixel
        self.streak_rate = rng.uniform(0.0, 0.4)
        fy = np.fft.fftfreq(size)[:, None]
        fx = np.fft.rfftfreq(size)[None, :]
        f = np.hypot(fy, fx)
        self.psf = np.exp(-2 * (np.pi * self.psf_px * f) ** 2).astype(np.float32)
        nps_amp = np.sqrt(f * np.exp(-(f / (self.nps_peak * np.sqrt(2))) ** 2))
        full = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
        norm = np.sqrt(np.mean(full * np.exp(-(full / (self.nps_peak * np.sqrt(2))) ** 2)))
        self.nps_amp = (nps_amp / norm).astype(np.float32)

    def acquire(self, hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Blurred image plus correlated noise (sigma = noise_hu) in one pass through Fourier space."""
        white = rng.standard_normal(hu.shape, dtype=np.float32)
        spectrum = np.fft.rfft2(hu) * self.psf + np.fft.rfft2(white) * (self.nps_amp * self.noise_hu)
        return np.fft.irfft2(spectrum, s=hu.shape).astype(np.float32)

    def streaks(self, hu: np.ndarray, centres: list[tuple[float, float]], rng: np.random.Generator) -> np.ndarray:
        """Alternating bright and dark lines through dense objects (photon starvation, beam hardening)."""
        if not centres or rng.uniform() > self.streak_rate:
            return hu
        axis = np.arange(self.size, dtype=np.float32)
        for _ in range(rng.integers(1, 4)):
            r, c = centres[rng.integers(len(centres))]
            angle = rng.uniform(0, np.pi)
            d = (axis[None, :] - c) * np.sin(angle) - (axis[:, None] - r) * np.cos(angle)
            width = rng.uniform(0.6, 1.5) * self.size / 512
            amp = rng.uniform(15, 60) * rng.choice([-1, 1])
            hu = hu + amp * (np.exp(-(d / width) ** 2) - 0.5 * np.exp(-((np.abs(d) - 3 * width) / width) ** 2))
        return hu
