"""The PULSE CNN family: one class, offline (whole spectrogram) and streaming (one frame per step).

Layout everywhere: magnitudes ``[B, F, T]`` (F = 513 bins, T = frames) → logits ``[B, C_out, F, T]``.
Channel 0 is the noise logit f: f ≥ 0 means the bin is noise (PU's positive class), f < 0 speech.

Time padding is explicit per layer so that streaming and offline agree: a 3-wide time kernel is padded
(2d, 0) when causal (time dilation d, TIME_DILATIONS) and (1, 1) when it carries one frame of lookahead. The
first ``lookahead`` 3×3 layers carry lookahead, so the model's output for frame t depends on input frames
≤ t + lookahead.
Frequency is always 'same'-padded: (d, d) for a 3-wide kernel with frequency dilation d (FREQ_DILATIONS).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rtpulse.errors import RtpulseError, short_reason
from rtpulse.files import discard, temp_beside, write_synced

N_BINS = 513

# (in, out, kernel) per conv layer; ReLU + dropout follow every layer but the last.
PRESETS: dict[str, tuple[tuple[int, int, int], ...]] = {
    # The paper's 11 layers: 98,425 parameters, receptive field 17×17.
    "paper": (
        (1, 8, 3), (8, 8, 3), (8, 16, 3), (16, 16, 3), (16, 32, 3), (32, 32, 3), (32, 64, 3), (64, 64, 3),
        (64, 128, 1), (128, 128, 1), (128, 1, 1),
    ),
    # Reference code `--blocks 2` (its PU default): 7 layers, 18,073 parameters, receptive field 13×13.
    "blocks2": ((1, 8, 3), (8, 8, 3), (8, 16, 3), (16, 16, 3), (16, 32, 3), (32, 32, 3), (32, 1, 1)),
    # Reference code `--blocks 3` (its PN setting): 9 layers, receptive field 17×17.
    "blocks3": (
        (1, 8, 3), (8, 8, 3), (8, 16, 3), (16, 16, 3), (16, 32, 3), (32, 32, 3), (32, 64, 3), (64, 64, 3),
        (64, 1, 1),
    ),
}

# Frequency dilation per layer (default 1): the same kernels and MACs, a wider view across frequency. blocks2's
# 13 bins (200 Hz) hold about one harmonic spacing of a voice; blocks2f sees 65 bins (1 kHz), several harmonics.
PRESETS["blocks2f"] = PRESETS["blocks2"]
FREQ_DILATIONS: dict[str, tuple[int, ...]] = {"blocks2f": (1, 2, 4, 8, 16, 1, 1)}
# Time dilation per layer (default 1). blocks3 sees 17 frames (0.27 s): too short to tell a steady noise from a
# held vowel. blocks3t adds two causal 64→64 layers dilated 4 and 16 frames in time (57 frames, 0.9 s), placed
# before the output layer so that a trained blocks3 grows into it unchanged (trainer.grow). A layer dilated d in
# time caches 2d frames when streaming; lookahead layers are never dilated (ModelConfig checks).
PRESETS["blocks3t"] = PRESETS["blocks3"][:-1] + ((64, 64, 3), (64, 64, 3), (64, 1, 1))
TIME_DILATIONS: dict[str, tuple[int, ...]] = {"blocks3t": (1,) * 8 + (4, 16, 1)}
for _dilations in (FREQ_DILATIONS, TIME_DILATIONS):
    assert all(len(d) == len(PRESETS[name]) for name, d in _dilations.items()), "one dilation per layer"

COMPRESSIONS = ("power", "linear", "log1p")
MASKS = ("binary", "soft", "posterior")  # how logits become a gain: rtpulse.stream.mask_gain

# Level normalisation (config.level_frames > 0): mean |X|² of a frame of a unit-std signal is Σ w²
# (Parseval) = 1024·(0.54² + 0.46²/2) for the periodic Hamming. Frames more than 60 dB below that are
# silence: they do not count towards the level, and gains are capped at +60 dB, so near-silence is not
# blown up to full scale.
LEVEL_REF_POWER = 1024 * (0.54**2 + 0.46**2 / 2)
LEVEL_MIN_POWER = LEVEL_REF_POWER * 1e-6
METHODS = ("pu", "pn", "mixit")

# Noise-floor channels (config.floor_frames > 0): a minimum-statistics tracker per bin, min over the last K frames
# of the power averaged over FLOOR_SMOOTH_FRAMES frames (averaging first: the min of a raw noise periodogram sits
# far below its mean). The 13-frame view of blocks2 (~0.2 s) cannot tell a steady noise from a held vowel; this
# gives every bin its own reference over K frames (~1.5 s at K = 94), which the network reads as two extra inputs:
# the floor (compressed like |X|) and the log ratio of |X|² to it (a posteriori SNR). FLOOR_EPS (60 dB under the
# unit level, per bin) keeps silence at ratio ≈ 1.
FLOOR_SMOOTH_FRAMES = 4
FLOOR_EPS = LEVEL_MIN_POWER
FLOOR_RATIO_SCALE = 0.25  # log ratios of ±14 (±60 dB) → ±3.5, the range of the other inputs

# The frequency input (config.freq_input): convolutions are shift-invariant across frequency, so without it the
# network knows where a bin sits only near the spectrum's edges; insects at 6 kHz and a voice's second harmonic at
# 300 Hz look alike locally. One constant channel per bin, −FREQ_SCALE at DC … +FREQ_SCALE at Nyquist, tells it:
# grown into a trained model its weights start at zero, and Adam moves a weight by about lr per step whatever
# the gradient, so a channel of ±3 (the range of the other inputs) is learned 3× faster than one of ±1.
FREQ_SCALE = 3.0
MIN_FREQ_SCALE, MAX_FREQ_SCALE = 0.1, 1000.0  # config.freq_scale bounds

# The band inputs (config.band_input): a 3×3 stack sees 17 bins (270 Hz), so at 6 kHz it cannot tell insects'
# chirps in a pause from a voice's upper harmonics over a voiced frame below. Four channels hold each frame's mean
# input (the compressed magnitude channel) in 0–1, 1–2, 2–4 and 4–8 kHz, the same at every bin: what the rest of
# the spectrum is doing now. Per frame only, so streaming needs no state for them. Scaled ×BAND_SCALE for the
# reason FREQ_SCALE is: grown into a trained model their weights start at zero and move about lr per step.
BAND_EDGES = (0, 64, 128, 256, N_BINS)  # bins: 0, 1, 2, 4, 8 kHz (15.625 Hz per bin)
BAND_SCALE = 3.0

# config.mask_sharpness bounds: below 0.1 every soft gain sits near 0.5; above 100 it is the binary mask.
MIN_SHARPNESS, MAX_SHARPNESS = 0.1, 100.0
# config.extra's deepest nesting: a trainer's notes are 3 levels deep; json reads ~1000, but writing one back
# (dataclasses.asdict recurses twice per level) fails past ~450
MAX_EXTRA_DEPTH = 32


def _depth(x: object) -> int:
    """How deeply JSON lists and objects nest in ``x`` (0 for a scalar); iterative, so any depth can be measured."""
    deepest, todo = 0, [(x, 0)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level + 1)
            todo.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _is_int(x: object) -> bool:
    """An integer and not a bool (JSON's true is an int to isinstance, and would reach torch as a size)."""
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; stored inside every model file.

    compress: input feature — "power" |X|^(1/15) (the paper), "linear" |X|/15 (what the reference
        code computes: ``abs(stft) ** 1/15`` parses as a division), "log1p" log(1 + |X|).
    lookahead: frames of future context, 0 (causal) … the preset's number of 3×3 layers.
    out_channels: 1 for PU/PN; MixIT's extra masks are extra output channels (channel 0 stays speech's
        complement, i.e. the noise logit).
    level_frames: 0 = magnitudes go to the network as they are; K > 0 = they are first scaled by a causal
        gain that brings the mean frame power of the last K frames to that of a unit-std signal — the level
        the trainer's normalised mixtures have — so a quiet microphone and a loud file look alike to the
        network. The mask still applies to the unscaled spectrum.
    mask: the mask this model is meant to be used with when the user names none — "binary" (the paper's
        1[f < 0]), "soft" (σ(−s·f), s = mask_sharpness) or "posterior" (1 − e^f/2, see rtpulse.stream.mask_gain);
        measured scores decide.
    floor_frames: 0 = one input channel; K > 0 = two more, from a causal noise-floor tracker over the last K
        frames (see FLOOR_SMOOTH_FRAMES).
    freq_input: one more input channel holding each bin's frequency, −freq_scale at DC … +freq_scale at Nyquist.
    freq_scale: that channel's range (FREQ_SCALE = 3 by default; larger = learned faster, see there).
    band_input: four more input channels, each frame's mean input in 0–1, 1–2, 2–4, 4–8 kHz (see BAND_EDGES).
    mask_sharpness: s in the soft mask σ(−s·f) (1 = PULSE's σ(−f)). The logits keep their PU meaning (the
        posterior mask and f = 0 as the decision boundary are unchanged); a PU classifier trained briefly is less
        confident than SI-SNR rewards, so s is picked after training on mixtures with clean references
        (benchmarks/mask_sharpness.py); training writes s = 1.
    """

    preset: str = "blocks2"
    compress: str = "linear"
    lookahead: int = 0
    method: str = "pu"
    out_channels: int = 1
    dropout: float = 0.2
    level_frames: int = 0
    mask: str = "binary"
    floor_frames: int = 0
    freq_input: bool = False
    freq_scale: float = FREQ_SCALE
    band_input: bool = False
    mask_sharpness: float = 1.0
    extra: dict = field(default_factory=dict)  # free-form notes (training command, scores)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise RtpulseError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.compress not in COMPRESSIONS:
            raise RtpulseError(f"unknown compress {self.compress!r}; choose one of {', '.join(COMPRESSIONS)}")
        if self.method not in METHODS:
            raise RtpulseError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not _is_int(self.lookahead):
            raise RtpulseError(f"lookahead must be an integer, got {self.lookahead!r}")
        if self.mask not in MASKS:
            raise RtpulseError(f"mask must be one of {', '.join(MASKS)}, got {self.mask!r}")
        if not _is_int(self.level_frames) or not 0 <= self.level_frames <= 1000:
            raise RtpulseError(f"level_frames must be an integer 0…1000, got {self.level_frames!r}")
        if not _is_int(self.floor_frames) or not 0 <= self.floor_frames <= 1000:
            raise RtpulseError(f"floor_frames must be an integer 0…1000, got {self.floor_frames!r}")
        if not isinstance(self.freq_input, bool):
            raise RtpulseError(f"freq_input must be true or false, got {self.freq_input!r}")
        if not isinstance(self.band_input, bool):
            raise RtpulseError(f"band_input must be true or false, got {self.band_input!r}")
        if not isinstance(self.extra, dict):  # tools read it as a dict (mask_sharpness, checkpoints)
            raise RtpulseError(f"extra must be a JSON object, got {type(self.extra).__name__}")
        if _depth(self.extra) > MAX_EXTRA_DEPTH:  # it would load, then fail to be written back (a traceback)
            raise RtpulseError(f"extra nests deeper than {MAX_EXTRA_DEPTH} levels")
        scale = self.freq_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not MIN_FREQ_SCALE <= scale <= MAX_FREQ_SCALE:
            raise RtpulseError(f"freq_scale must be a number {MIN_FREQ_SCALE:g}…{MAX_FREQ_SCALE:g}, got {scale!r}")
        sharp = self.mask_sharpness
        if isinstance(sharp, bool) or not isinstance(sharp, (int, float)) or not MIN_SHARPNESS <= sharp <= MAX_SHARPNESS:
            raise RtpulseError(f"mask_sharpness must be a number {MIN_SHARPNESS:g}…{MAX_SHARPNESS:g}, got {sharp!r}")
        n3 = self.max_lookahead
        if not 0 <= self.lookahead <= n3:
            raise RtpulseError(f"lookahead must be 0…{n3} for preset {self.preset!r}, got {self.lookahead}")
        if not _is_int(self.out_channels) or not 1 <= self.out_channels <= 16:
            raise RtpulseError(f"out_channels must be an integer 1…16, got {self.out_channels!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise RtpulseError(f"dropout must be a number in [0, 1), got {self.dropout!r}")

    @property
    def input_names(self) -> tuple[str, ...]:
        """The input channels in order (how a model grows more inputs: trainer.grow.widen_inputs)."""
        floor = ("floor", "floor_snr") if self.floor_frames else ()
        bands = ("band_0_1k", "band_1_2k", "band_2_4k", "band_4_8k") if self.band_input else ()
        return ("magnitude", *floor, *(("frequency",) if self.freq_input else ()), *bands)

    @property
    def in_channels(self) -> int:
        return len(self.input_names)

    @property
    def layers(self) -> tuple[tuple[int, int, int], ...]:
        spec = PRESETS[self.preset]
        (_, first_out, first_k), (last_in, _, last_k) = spec[0], spec[-1]
        return ((self.in_channels, first_out, first_k),) + spec[1:-1] + ((last_in, self.out_channels, last_k),)

    @property
    def freq_dilations(self) -> tuple[int, ...]:
        return FREQ_DILATIONS.get(self.preset, (1,) * len(PRESETS[self.preset]))

    @property
    def time_dilations(self) -> tuple[int, ...]:
        return TIME_DILATIONS.get(self.preset, (1,) * len(PRESETS[self.preset]))

    @property
    def max_lookahead(self) -> int:
        """The 3×3 layers before the first time-dilated one: each can carry one frame of lookahead."""
        n = 0
        for (_, _, k), d in zip(PRESETS[self.preset], self.time_dilations):
            if k == 3:
                if d > 1:
                    break
                n += 1
        return n

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        data = json.loads(text)
        if not isinstance(data, dict):  # a string's letters would be read as its keys
            raise RtpulseError(f"the config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise RtpulseError(f"model config has unknown keys: {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass
class StreamState:
    """Per-layer caches and streaming kernels for :meth:`PulseCNN.step`.

    caches[i]: the last (k−1)·d input columns of layer i (time dilation d), ``[B, C_in, (k−1)·d, F]`` (empty for
        1×1 layers), a ring whose oldest column sits at slot positions[i]; a step reads every d-th column and
        overwrites the oldest, so a hop copies k−1 columns per layer, not the whole span.
    kernels[i]: layer i's weight folded for a one-column step — ``[C_out, C_in·k_t, k_f]``, the time taps
        moved into the channel axis so a step is one 1-D convolution over frequency (several times
        faster than a 2-D convolution on a 3-column input). A snapshot: re-init after changing weights.
    level_powers, frames_seen: the level normaliser's memory (see ModelConfig.level_frames).
    floor_powers, floor_smooth: the noise-floor tracker's memory — the last FLOOR_SMOOTH_FRAMES powers and the
        last K smoothed powers per bin (+inf before the stream starts, as offline pads the min).
    warmup[i]: outputs layer i still has to swallow — a lookahead layer's first output belongs to
        frame −1, which offline never computes, so it must not reach the next layer's cache.
    """

    caches: list[torch.Tensor]
    kernels: list[tuple[torch.Tensor, torch.Tensor | None]]
    warmup: list[int]
    positions: list[int] = field(default_factory=list)
    level_powers: torch.Tensor | None = None  # [B, 2, K]: gated mean |X|² and loud flag of the last K frames
    frames_seen: int = 0
    floor_powers: torch.Tensor | None = None  # [B, F, FLOOR_SMOOTH_FRAMES]
    floor_smooth: torch.Tensor | None = None  # [B, F, K]


class PulseCNN(nn.Module):
    """The PULSE CNN (and the reference code's `--blocks N` variants) as one fully convolutional net."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, cout, k, dilation=(d_f, d_t))
            for (cin, cout, k), d_f, d_t in zip(config.layers, config.freq_dilations, config.time_dilations)
        )
        # the frequency channel's values, made once (not per streaming hop); not persistent: never in a model file
        position = torch.linspace(-config.freq_scale, config.freq_scale, N_BINS)
        self.register_buffer("freq_position", position, persistent=False)
        self.dropout = nn.Dropout(config.dropout)
        # Time padding (past, future) per layer; the first `lookahead` 3×3 layers get one future frame.
        pads, budget = [], config.lookahead
        for (_, _, k), d in zip(config.layers, config.time_dilations):
            if k == 1:
                pads.append((0, 0))
            elif budget > 0:  # never a dilated layer (max_lookahead stops before the first)
                pads.append((1, 1))
                budget -= 1
            else:
                pads.append(((k - 1) * d, 0))
        self.time_pads: tuple[tuple[int, int], ...] = tuple(pads)

    @property
    def lookahead(self) -> int:
        return self.config.lookahead

    @property
    def receptive_field(self) -> tuple[int, int]:
        """(frequency bins, time frames) that one output bin sees."""
        layers = self.config.layers
        rf_f = 1 + sum((k - 1) * d for (_, _, k), d in zip(layers, self.config.freq_dilations))
        return rf_f, 1 + sum((k - 1) * d for (_, _, k), d in zip(layers, self.config.time_dilations))

    @property
    def past_frames(self) -> int:
        """Past frames one output frame depends on: 2d per causal 3×3 layer (time dilation d), 1 per lookahead
        layer, plus the longer of the level normaliser's K − 1 and the floor tracker's. Chunked processing needs
        this much context to be exact."""
        level = self.config.level_frames - 1 if self.config.level_frames else 0
        floor = self.config.floor_frames + FLOOR_SMOOTH_FRAMES - 2 if self.config.floor_frames else 0
        return sum(past for past, _ in self.time_pads) + max(level, floor)

    def level_gain(self, mag: torch.Tensor) -> torch.Tensor:
        """Causal level-normalising gain: magnitudes ``[B, F, T]`` → ``[B, 1, T]`` (ones when off).

        Frame t's gain uses the mean power of the frames among t−K+1 … t that are not silent (gated, like a
        loudness meter): silence before a stream starts, or between phrases, must not inflate the gain.
        """
        k = self.config.level_frames
        if k == 0:
            return torch.ones_like(mag[:, :1])
        power, loud = self._gated_power(mag.square().mean(1, keepdim=True))  # [B, 1, T] each
        total = F.avg_pool1d(F.pad(power, (k - 1, 0)), k, stride=1) * k  # sums over the window
        count = F.avg_pool1d(F.pad(loud, (k - 1, 0)), k, stride=1) * k
        return self._gain_for(total / count.round().clamp_min(1))

    @staticmethod
    def _gated_power(power: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(power of the frames above the gate, else 0; 1 for those frames, else 0)."""
        loud = (power >= LEVEL_MIN_POWER).to(power.dtype)
        return power * loud, loud

    @staticmethod
    def _gain_for(mean_power: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(LEVEL_REF_POWER / mean_power.clamp_min(LEVEL_MIN_POWER))

    def noise_floor(self, power: torch.Tensor) -> torch.Tensor:
        """Causal noise floor per bin: powers ``[B, F, T]`` → ``[B, F, T]`` (see FLOOR_SMOOTH_FRAMES).

        Frame t: min over frames t−K+1 … t of the mean power of frames t′−S+1 … t′ — each mean over the frames
        that exist (a stream's first frames have less history), each min over the means that exist."""
        s, k = FLOOR_SMOOTH_FRAMES, self.config.floor_frames
        sums = F.avg_pool1d(F.pad(power, (s - 1, 0)), s, stride=1) * s
        count = torch.arange(1, power.shape[-1] + 1, device=power.device, dtype=power.dtype).clamp_max(s)
        smooth = sums / count
        return -F.max_pool1d(F.pad(-smooth, (k - 1, 0), value=-math.inf), k, stride=1)

    def _compress(self, mag: torch.Tensor) -> torch.Tensor:
        c = self.config.compress
        if c == "power":
            return mag.clamp_min(0).pow(1.0 / 15.0)
        if c == "linear":
            return mag / 15.0
        return torch.log1p(mag)

    def features(
        self, mag: torch.Tensor, gain: torch.Tensor | None = None, floor: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Level-normalised, compressed magnitudes (and floor, frequency channels): ``[B, F, T]`` → ``[B, C_in, F, T]``.

        ``gain`` and ``floor`` (powers) are the streaming path's own; offline computes them here."""
        gain = self.level_gain(mag) if gain is None else gain
        channels = [self._compress(mag * gain)]
        if self.config.floor_frames:
            power = mag.square()
            floor = self.noise_floor(power) if floor is None else floor
            g2 = gain.square()
            channels.append(self._compress(floor.sqrt() * gain))
            ratio = torch.log((power * g2 + FLOOR_EPS) / (floor * g2 + FLOOR_EPS))
            channels.append(ratio * FLOOR_RATIO_SCALE)
        if self.config.freq_input:
            channels.append(self.freq_position.to(channels[0].dtype)[:, None].expand_as(channels[0]))
        if self.config.band_input:
            for lo, hi in itertools.pairwise(BAND_EDGES):
                band = channels[0][:, lo:hi].mean(1, keepdim=True) * BAND_SCALE  # [B, 1, T]
                channels.append(band.expand_as(channels[0]))
        return torch.stack(channels, 1)

    def forward(self, mag: torch.Tensor, context_frames: int = 0, gain: torch.Tensor | None = None) -> torch.Tensor:
        """Whole spectrogram: magnitudes ``[B, F, T]`` → logits ``[B, C_out, F, T − context_frames]``.

        ``context_frames``: leading frames that only feed the level and floor trackers (training on short crops
        with the trackers' history, without paying the network for it); the network starts after them.
        ``gain`` ``[B, 1, T]``: a level gain to use instead of the input's own (training: noise clips shown at
        the gain of a mixture, see TrainConfig.p_gain)."""
        x = self.features(mag, gain)[..., context_frames:]
        last = len(self.convs) - 1
        for i, (conv, (past, future)) in enumerate(zip(self.convs, self.time_pads)):
            fpad = conv.dilation[0] * (conv.kernel_size[0] // 2)
            if past or future or fpad:  # F.pad copies even when it adds nothing: autograd would keep both copies
                x = F.pad(x, (past, future, fpad, fpad))  # [B, C, F + 2fpad, T + past + future]
            x = conv(x)  # [B, C_out, F, T]
            if i < last:
                x = self.dropout(torch.relu(x))
        return x

    @torch.no_grad()
    def init_state(self, batch: int = 1) -> StreamState:
        """Zero caches (the zero time-padding offline sees before frame 0) and folded kernels."""
        caches, kernels = [], []
        for conv in self.convs:
            w = conv.weight.detach()  # [C_out, C_in, k_f, k_t]
            c_out, c_in, k_f, k_t = w.shape
            span = (k_t - 1) * conv.dilation[1]
            caches.append(torch.zeros(batch, c_in, span, N_BINS, dtype=w.dtype, device=w.device))
            folded = w.permute(0, 1, 3, 2).reshape(c_out, c_in * k_t, k_f).contiguous()  # channel = c_in·k_t + t
            kernels.append((folded, None if conv.bias is None else conv.bias.detach().clone()))
        warmup = [future for _, future in self.time_pads]
        k, dev = self.config.level_frames, caches[0].device
        powers = torch.zeros(batch, 2, k, device=dev) if k else None
        state = StreamState(caches, kernels, warmup, level_powers=powers, positions=[0] * len(caches))
        if self.config.floor_frames:
            state.floor_powers = torch.zeros(batch, N_BINS, FLOOR_SMOOTH_FRAMES, device=dev)
            state.floor_smooth = torch.full((batch, N_BINS, self.config.floor_frames), math.inf, device=dev)
        return state

    @torch.no_grad()
    def step(self, mag_col: torch.Tensor, state: StreamState) -> torch.Tensor | None:
        """One new frame: magnitudes ``[B, F]`` → logits ``[B, C_out, F]`` for frame (t − lookahead).

        Each layer computes exactly one output column from its cached (k−1)·d columns plus the new one;
        nothing is recomputed. Returns None for the first ``lookahead`` frames (output not yet defined).
        Dropout is not applied (call on a model in eval mode for parity with :meth:`forward`).
        """
        gain, floor, n = None, None, state.frames_seen
        if state.level_powers is not None:
            power, loud = self._gated_power(mag_col.square().mean(1))  # [B] each
            ring = state.level_powers  # [B, 2, K]
            ring[:, 0, n % ring.shape[2]] = power
            ring[:, 1, n % ring.shape[2]] = loud
            total, count = ring.sum(2).unbind(1)  # [B] each
            gain = self._gain_for(total / count.clamp_min(1))[:, None, None]
        if state.floor_smooth is not None:
            s, k = FLOOR_SMOOTH_FRAMES, state.floor_smooth.shape[2]
            state.floor_powers[:, :, n % s] = mag_col.square()
            state.floor_smooth[:, :, n % k] = state.floor_powers.sum(2) / min(n + 1, s)
            floor = state.floor_smooth.amin(2, keepdim=True)  # [B, F, 1]
        state.frames_seen += 1
        x = self.features(mag_col.unsqueeze(-1), gain, floor)[..., 0]  # [B, C_in, F]
        last = len(self.convs) - 1
        dilations = zip(self.config.freq_dilations, self.config.time_dilations)
        for i, ((weight, bias), (d, d_t)) in enumerate(zip(state.kernels, dilations)):
            cache, oldest = state.caches[i], state.positions[i]
            span = cache.shape[2]
            if span > 0:
                taps = [cache[:, :, (oldest + j) % span] for j in range(0, span, d_t)]  # frames t − span … t − d_t
                window = torch.stack((*taps, x), dim=2)  # [B, C_in, k_t, F], oldest column first
                cache[:, :, oldest] = x
                state.positions[i] = (oldest + 1) % span
                x = window.reshape(x.shape[0], -1, x.shape[-1])  # [B, C_in·k_t, F]
            x = F.conv1d(x, weight, bias, padding=d * (weight.shape[-1] // 2), dilation=d)  # [B, C_out, F]
            if state.warmup[i] > 0:
                state.warmup[i] -= 1
                return None
            if i < last:
                x = torch.relu(x)
        return x


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- model files -------------------------------------------------------------------------------------
# A model file is safetensors: tensors plus a string metadata field holding the config as JSON.
# Loading never unpickles anything, so a file cannot execute code.

_META_KEY = "rtpulse_config"
MAX_HEADER_BYTES = 1 << 20  # the shipped model's header is under 4 kB


def save_model(model: PulseCNN, path: str | os.PathLike) -> None:
    """Write atomically (temp file in the same folder, then rename)."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    try:
        # bytes written by Python, not safetensors' save_file: that one creates the file 0600, ignoring the umask
        write_synced(tmp, save(tensors, metadata={_META_KEY: model.config.to_json(), "format": "pt"}))
        os.replace(tmp, path)
    except OSError as e:  # a full disk: the error from write() names no file, and the temp name is not the user's
        raise RtpulseError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        discard(tmp)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> PulseCNN:
    """Load a model file written by :func:`save_model`; any problem is one :class:`RtpulseError` line."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        if path.is_dir():
            raise RtpulseError(f"model {path} is a folder; give a model file (.safetensors)")
        if not path.is_file():
            if path.exists():  # a FIFO would block the read; /dev/stdin or a device cannot be mapped
                raise RtpulseError(f"model {path} is not a regular file (a pipe or a device); give a model file")
            if path.is_symlink():  # a loop, or a link to nothing
                raise RtpulseError(f"model {path} is a link that leads to no file")
            raise RtpulseError(f"model file not found: {path}")
        with path.open("rb") as raw:  # safetensors: an 8-byte little-endian header length, the JSON header, the data
            header_bytes = int.from_bytes(raw.read(8), "little")
    except OSError as e:  # a name past 255 bytes, a folder that cannot be read: pathlib raises rather than answers
        raise RtpulseError(f"cannot read the model file {path}: {e.strerror or e}") from None
    # a real header is a few kB (dozens of tensors and the config): a huge one is not a model, and parsing it would
    # cost seconds and gigabytes before any check
    if header_bytes > MAX_HEADER_BYTES:
        raise RtpulseError(f"{path} is not an rtpulse model file: its header claims {header_bytes:,} bytes")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if _META_KEY not in meta:
                raise RtpulseError(f"{path} has no rtpulse config; it is not an rtpulse model file")
            try:
                config = ModelConfig.from_json(meta[_META_KEY])
            except (ValueError, TypeError, RecursionError, RtpulseError) as e:  # JSONDecodeError is a ValueError
                raise RtpulseError(f"{path} has a broken config: {short_reason(e)}") from None
            # names and shapes against the config before any tensor is read, so a hostile file cannot allocate much
            expected = {}
            for i, (cin, cout, k) in enumerate(config.layers):
                expected[f"convs.{i}.weight"], expected[f"convs.{i}.bias"] = (cout, cin, k, k), (cout,)
            if set(f.keys()) != set(expected):
                raise RtpulseError(f"{path}: weights do not match its config (preset {config.preset!r})")
            for k, want in expected.items():
                shape = tuple(f.get_slice(k).get_shape())
                if shape != want:
                    raise RtpulseError(f"{path}: tensor {k} has shape {shape}, config {config.preset!r} needs {want}")
            tensors = {k: f.get_tensor(k) for k in expected}
    except (SafetensorError, OSError, ValueError) as e:
        raise RtpulseError(f"{path} is not an rtpulse model file (safetensors): {short_reason(e)}") from None
    odd = [k for k, v in tensors.items() if not v.is_floating_point()]
    if odd:  # complex or integer weights would load with a warning, or be cast silently
        raise RtpulseError(f"{path}: tensor {odd[0]} holds {tensors[odd[0]].dtype} values, not real floating point")
    bad = [k for k, v in tensors.items() if not torch.isfinite(v.float()).all()]
    if bad:  # a damaged file would otherwise denoise to NaN (soft mask) or silence (binary) without a word
        raise RtpulseError(f"{path}: tensor {bad[0]} holds NaN or infinite values; the model file is damaged")
    model = PulseCNN(config)
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    return model.to(device).eval()


def default_model_path() -> Path:
    return Path(__file__).parent / "weights" / "default.safetensors"


def load_default_model() -> PulseCNN:
    path = default_model_path()
    if not path.is_file():
        raise RtpulseError("no default model is shipped in this build yet; pass --model PATH to a trained model")
    return load_model(path)
