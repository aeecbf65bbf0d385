"""Stateful streaming resampler (rational polyphase FIR) for the live path.

Feeding a signal in blocks of any sizes gives exactly the samples of feeding it at once: the
resampler keeps the last ``taps`` input samples and the phase of the next output. Output sample n
is ``Σ_i h[n·M − i·L] · x[i]`` (upsample by L, low-pass h, keep every M-th), computed as soon as its
newest input ``x[⌊n·M/L⌋]`` has arrived, so the stream has no look-ahead and no clicks at block edges.

Delay: h is linear phase, so the output lags the input by :attr:`delay_out` output samples
(``(len(h) − 1) / 2`` at the upsampled rate, expressed at the output rate).
"""

from __future__ import annotations

from math import gcd

import numpy as np
from scipy.signal import firwin


class StreamResampler:
    """``rate_in`` → ``rate_out`` in blocks. ``process(x [n]) -> y [≈ n·rate_out/rate_in]`` float32.

    After N input samples in total, exactly ``⌊(N − 1)·L/M⌋ + 1`` outputs have been produced (N ≥ 1),
    whatever the block sizes. ``taps`` is the filter length per polyphase branch (in input samples).
    """

    def __init__(self, rate_in: int, rate_out: int, taps: int = 32, stopband_db: float = 80.0) -> None:
        g = gcd(rate_in, rate_out)
        self.up, self.down = rate_out // g, rate_in // g
        self.rate_in, self.rate_out = rate_in, rate_out
        self.identity = self.up == self.down
        if self.identity:
            self.taps = 1
            self.delay_out = 0.0
            self.reset()
            return
        self.taps = taps
        length = taps * self.up  # filter at the upsampled rate
        cutoff = 0.9 / max(self.up, self.down)  # of the upsampled Nyquist: keep ~90% of the narrower band
        h = firwin(length, cutoff, window=("kaiser", _kaiser_beta(stopband_db))) * self.up
        # polyphase[p, t] = h[p + t·L]: output with phase p combines x[i0], x[i0−1], … x[i0−taps+1]
        self.polyphase = h.reshape(taps, self.up).T.copy()  # [L, taps]
        self.delay_out = (length - 1) / 2 / self.down  # output samples
        self.reset()

    @property
    def delay_in_seconds(self) -> float:
        return self.delay_out / self.rate_out

    def reset(self) -> None:
        self._history = np.zeros(self.taps, dtype=np.float32)  # last `taps` inputs (zeros before the start)
        self._consumed = 0  # input samples seen
        self._next = 0  # index of the next output sample

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if self.identity:
            return x.copy()
        if x.size == 0:
            return np.zeros(0, np.float32)
        buf = np.concatenate((self._history, x))  # buf[j] = input sample (consumed − taps + j)
        base = self._consumed - self.taps
        last = self._consumed + x.size - 1  # newest input index available
        n_end = last * self.up // self.down + 1  # outputs whose newest input has arrived
        n = np.arange(self._next, n_end, dtype=np.int64)
        i0 = n * self.down // self.up - base  # [n_out] position of newest input in buf
        phase = (n * self.down) % self.up
        idx = i0[:, None] - np.arange(self.taps)[None, :]  # [n_out, taps]
        y = np.einsum("nt,nt->n", self.polyphase[phase], buf[idx].astype(np.float64)).astype(np.float32)
        self._next = n_end
        self._consumed += x.size
        self._history = buf[buf.size - self.taps :].copy()
        return y


def _kaiser_beta(atten_db: float) -> float:
    if atten_db > 50:
        return 0.1102 * (atten_db - 8.7)
    if atten_db >= 21:
        return 0.5842 * (atten_db - 21) ** 0.4 + 0.07886 * (atten_db - 21)
    return 0.0
