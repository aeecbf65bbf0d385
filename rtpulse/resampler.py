"""Stateful streaming resampler (rational polyphase FIR) for the live path.

Feeding a signal in blocks of any sizes gives exactly the samples of feeding it at once: the
resampler keeps the last ``taps`` input samples and the phase of the next output. Output sample n
is ``Σ_i h[n·M − i·L] · x[i]`` (upsample by L, low-pass h, keep every M-th), computed as soon as its
newest input ``x[⌊n·M/L⌋]`` has arrived, so the stream has no look-ahead and no clicks at block edges.

Delay: h is linear phase, so the output lags the input by :attr:`delay_out` output samples
(``(len(h) − 1) / 2`` at the upsampled rate, expressed at the output rate): 10 samples at 16 kHz
for 48 or 44.1 kHz → 16 kHz, 30 samples at 48 kHz (27.6 at 44.1 kHz) for the way back.
"""

from __future__ import annotations

from math import gcd

import numpy as np
from scipy.signal import firwin

from rtpulse.errors import RtpulseError


def mono_samples(x: np.ndarray, who: str) -> np.ndarray:
    """``x`` as ``[n]`` (``[n, 1]`` and ``[1, n]`` too); a one-line error for ``[n, C]``: flattened, its channels
    would interleave sample by sample."""
    if sum(n > 1 for n in x.shape) > 1:
        raise RtpulseError(f"{who} takes mono samples [n], got shape {x.shape}: downmix the channels first (x.mean(1))")
    return x.reshape(-1)


class StreamResampler:
    """``rate_in`` → ``rate_out`` in blocks. ``process(x [n]) -> y [≈ n·rate_out/rate_in]`` float32 (mono only).

    After N input samples in total, exactly ``⌊(N − 1)·L/M⌋ + 1`` outputs have been produced (N ≥ 1),
    whatever the block sizes. The low-pass is the one ``scipy.signal.resample_poly`` (and so
    :func:`rtpulse.audio.resample`, used by `rtpulse denoise`) designs — Kaiser β = 5, cutoff at the
    narrower Nyquist, ``20·max(L, M) + 1`` taps — so live and offline resampling differ only by the delay.
    """

    def __init__(self, rate_in: int, rate_out: int) -> None:
        g = gcd(rate_in, rate_out)
        self.up, self.down = rate_out // g, rate_in // g
        self.rate_in, self.rate_out = rate_in, rate_out
        self.identity = self.up == self.down
        if self.identity:
            self.taps = 1
            self.delay_out = 0.0
            self.reset()
            return
        half = 10 * max(self.up, self.down)
        h = firwin(2 * half + 1, 1.0 / max(self.up, self.down), window=("kaiser", 5.0)) * self.up
        self.taps = -(-h.size // self.up)  # filter length per polyphase branch, in input samples
        h = np.pad(h, (0, self.taps * self.up - h.size))
        # polyphase[p, t] = h[p + t·L]: output with phase p combines x[i0], x[i0−1], … x[i0−taps+1]
        self.polyphase = h.reshape(self.taps, self.up).T.copy()  # [L, taps], float64
        self.delay_out = half / self.down  # linear phase: the centre tap, in output samples
        self.reset()

    @property
    def delay_in_seconds(self) -> float:
        return self.delay_out / self.rate_out

    def reset(self) -> None:
        self._history = np.zeros(self.taps, dtype=np.float32)  # last `taps` inputs (zeros before the start)
        self._consumed = 0  # input samples seen
        self._next = 0  # index of the next output sample

    def process(self, x: np.ndarray) -> np.ndarray:
        x = mono_samples(np.asarray(x, dtype=np.float32), "StreamResampler.process")
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
