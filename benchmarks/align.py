"""Delay location: where a known input shows up in a system's output."""

from __future__ import annotations

import numpy as np
from scipy.signal import fftconvolve


def locate_delay(reference: np.ndarray, output: np.ndarray, max_lag: int) -> int:
    """Lag d in [0, max_lag] maximising |Σ_n output[n + d]·reference[n]| (samples, output later).

    For an impulse as ``reference`` this is the position of the output's largest sample minus the
    impulse's position; for speech it is the cross-correlation peak. Both inputs are 1-D.
    """
    reference = np.asarray(reference, np.float64).reshape(-1)
    output = np.asarray(output, np.float64).reshape(-1)
    xc = fftconvolve(output, reference[::-1], mode="full")  # xc[len(ref) - 1 + d] = Σ out[n + d]·ref[n]
    zero = reference.size - 1
    lags = np.abs(xc[zero : zero + max_lag + 1])
    return int(np.argmax(lags))


def impulse_delay(system, length: int, position: int) -> int:
    """Feed an impulse at ``position`` through ``system([T]) -> [T]`` and locate it in the output."""
    x = np.zeros(length, np.float32)
    x[position] = 1.0
    y = np.asarray(system(x), np.float64)
    return int(np.argmax(np.abs(y[position:]))) if y.size > position else -1


def signed_lag(reference: np.ndarray, output: np.ndarray, max_lag: int) -> int:
    """Lag in [−max_lag, max_lag] maximising |xcorr| (positive: output later than reference)."""
    reference = np.asarray(reference, np.float64).reshape(-1)
    output = np.asarray(output, np.float64).reshape(-1)
    xc = np.abs(fftconvolve(output, reference[::-1], mode="full"))
    zero = reference.size - 1
    lo, hi = max(0, zero - max_lag), min(xc.size, zero + max_lag + 1)
    return int(np.argmax(xc[lo:hi])) + lo - zero
