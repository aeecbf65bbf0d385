"""The training configuration: one frozen dataclass, saved as RUN_DIR/config.json and in every model."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from rtpulse.errors import RtpulseError
from rtpulse.files import check_output_dir
from rtpulse.model import FREQ_SCALE, MAX_FREQ_SCALE, MIN_FREQ_SCALE, ModelConfig
from trainer.data import P_MIX_MARGIN_DB, QUIET_FLOOR_DB

_JSON_TYPES = {"float": float, "int": int, "str": str, "bool": bool}  # the field types a run config may hold
# the options only the PU loss reads; --p-gain and --p-level mixed have their own checks
PU_ONLY = ("prior", "risk", "beta", "gamma", "weight_exponent", "pvu_steps", "p_level", "p_mix_margin_db")


@dataclass(frozen=True)
class TrainConfig:
    out: str
    method: str = "pu"
    preset: str = "blocks2"
    lookahead: int = 0
    compress: str = "linear"
    dropout: float = 0.2
    level_frames: int = 0
    floor_frames: int = 0
    freq_input: bool = False
    band_input: bool = False
    freq_scale: float = FREQ_SCALE
    # data: synthetic (clean + noise) or real (noisy + noise); optional clean validation set
    clean: str | None = None
    noise: str | None = None
    noisy: str | None = None
    val_clean: str | None = None
    val_noise: str | None = None
    cache: str | None = None
    dev_fraction: float = 0.1
    dev_count: int = 32
    dev_seconds: float = 3.125
    crop_seconds: float = 3.125
    context_seconds: float = 0.0  # audio before each crop that only feeds the level/floor trackers
    snr_min: float = -5.0
    snr_max: float = 10.0
    noise_warp: float = 0.0  # share of noise clips (in U and P alike) played at another rate and re-coloured
    noise_mix: float = 0.0  # share of noise clips with a second noise crop added (often another recording)
    noise_balance: bool = False  # draw each noise folder (source) equally often, not ∝ its minutes
    # optimisation
    epochs: int = 10
    steps_per_epoch: int = 100
    # a time budget: after its first epoch the run sets `epochs` to what fits (`epochs` the cap) and clears this
    minutes: float | None = None
    batch_size: int = 8
    lr: float = 3e-4
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # or "cosine": decay to 1 % of lr at the last step
    output_bias: float | None = None
    # PU risk
    prior: float = 0.7
    risk: str = "nnpu"
    beta: float = 0.0
    gamma: float = 1.0
    weight_exponent: float = 1.0
    pvu_steps: int = 0  # first steps on the P-vs-U logistic warm start (losses.pu_risk "pvu"), then `risk`
    speech_floor_db: float | None = None  # keep only --clean/--val-clean files with data.noise_floor_db ≤ this
    # --val-clean files scored as references: only quiet ones (≤ this floor), as the quality benchmark's; 0 keeps all
    val_floor_db: float = QUIET_FLOOR_DB
    # P clips: "unit" std (paper), "matched" to the noise level inside a mixture, or "mixed": added to another U clip,
    # the bins where that noise dominates by p_mix_margin_db (default data.P_MIX_MARGIN_DB) being the P bins
    p_level: str = "unit"
    p_mix_margin_db: float | None = None
    # P clips through the level normaliser: "own" gain (brings a noise clip to full level, louder than noise ever is
    # inside a normalised mixture: a level cue that tells P from U) or "u", the gain of the U clip beside it
    p_gain: str = "own"
    init: str = "default"  # "he": Kaiming-normal convs (the default init makes the output ignore the input)
    clip_grad: float = 0.0  # max gradient norm (0: off)
    ema: float = 0.0  # decay of the weights' moving average that is validated and published (trainer.ema; 0: off)
    init_from: str | None = None  # start from this model file's weights (same compress; L may differ; a smaller preset grows)
    select_mask: str = "binary"
    seed: int = 0
    device: str | None = None
    # "auto": bf16 autocast on CUDA, float32 on CPU; "bf16" on CPU needs native bf16 (AVX512-BF16/AMX): ~2× faster
    precision: str = "auto"
    command: str = ""

    def validate(self, new_run: bool = True) -> TrainConfig:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise RtpulseError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        check_output_dir(self.run_dir)
        if not 0 <= self.dev_fraction < 1:
            raise RtpulseError(f"--dev-fraction must be in [0, 1), got {self.dev_fraction}")
        if not (-50 <= self.snr_min <= 50 and -50 <= self.snr_max <= 50):  # 10^(SNR/10) must stay a float
            raise RtpulseError(f"--snr-min and --snr-max must be −50…50 dB, got {self.snr_min:g} and {self.snr_max:g}")
        if self.snr_min > self.snr_max:
            raise RtpulseError(f"--snr-min {self.snr_min} is above --snr-max {self.snr_max}")
        if not 0 <= self.noise_warp <= 1:
            raise RtpulseError(f"--noise-warp is a share of the noise clips: 0…1, got {self.noise_warp:g}")
        if self.noise_warp > 0 and self.noisy is not None:  # U would hold the recordings' own noise, P warped noise
            raise RtpulseError("--noise-warp warps the noise mixed into --clean speech; with --noisy recordings P would "
                               "no longer be the noise U holds")
        if not 0 <= self.noise_mix <= 1:
            raise RtpulseError(f"--noise-mix is a share of the noise clips: 0…1, got {self.noise_mix:g}")
        if self.noise_mix > 0 and self.noisy is not None:
            raise RtpulseError("--noise-mix mixes the noise added to --clean speech; with --noisy recordings P would "
                               "no longer be the noise U holds")
        if self.noise_balance and self.noisy is not None:  # P would follow other proportions than U's own noise
            raise RtpulseError("--noise-balance reweights the noise mixed into --clean speech; with --noisy recordings "
                               "P would no longer be the noise U holds")
        if self.method not in ("pu", "pn", "mixit"):
            raise RtpulseError(f"--method must be pu, pn or mixit, got {self.method!r}")
        if self.noise is None:
            raise RtpulseError("--noise DIR is required (noise recordings)")
        if (self.clean is None) == (self.noisy is None):
            raise RtpulseError("give --clean DIR (synthetic recipe) or --noisy DIR (real recordings), exactly one")
        if self.noisy is not None and self.method != "pu":
            raise RtpulseError(f"--method {self.method} needs clean speech (--clean); --noisy trains PU only")
        if (self.val_clean is None) != (self.val_noise is None):
            raise RtpulseError("--val-clean and --val-noise go together")
        if not -120.0 <= self.val_floor_db <= 0.0:
            raise RtpulseError(f"--val-floor-db must be within −120…0 dB (0 keeps every file), got {self.val_floor_db:g}")
        if self.speech_floor_db is not None and self.noisy is not None:
            raise RtpulseError("--speech-floor-db selects the speech the mixtures are made of (--clean), not --noisy")
        if self.risk not in ("nnpu", "upu", "pvu"):
            raise RtpulseError(f"--risk must be nnpu, upu or pvu, got {self.risk!r}")
        if self.p_level not in ("unit", "matched", "mixed"):
            raise RtpulseError(f"--p-level must be unit, matched or mixed, got {self.p_level!r}")
        if self.p_gain not in ("own", "u"):
            raise RtpulseError(f"--p-gain must be own or u, got {self.p_gain!r}")
        if not 0 <= self.weight_exponent <= 4:  # |X|^p of near-silent bins: a negative p weighs them ~1e21
            raise RtpulseError(f"--weight-exponent must be 0…4 (1 = PULSE, 0 = unweighted), got {self.weight_exponent:g}")
        if self.p_level == "mixed" and (self.method != "pu" or self.p_gain != "own"):
            raise RtpulseError("--p-level mixed makes PU's P clips from U clips: it needs --method pu and --p-gain own")
        if self.p_mix_margin_db is not None and self.p_level != "mixed":
            raise RtpulseError("--p-mix-margin-db picks the P bins of --p-level mixed: give --p-level mixed")
        if self.p_mix_margin_db is not None and not 0 <= self.p_mix_margin_db <= 60:
            raise RtpulseError("--p-mix-margin-db must be 0…60 dB")
        # silently ignored, they would still be recorded in config.json as if they counted; a run from before this
        # check (the table gave its PN and MixIT rows --p-level matched) must still resume
        if self.method != "pu" and new_run:
            defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
            given = [k for k in PU_ONLY if getattr(self, k) != defaults[k]]
            if given:
                flag = "--" + given[0].replace("_", "-")
                raise RtpulseError(f"{flag} is a PU option (its P clips or its risk): --method {self.method} does not "
                                   "use it; drop it")
        if self.init not in ("default", "he"):
            raise RtpulseError(f"--init must be default or he, got {self.init!r}")
        if self.pvu_steps < 0 or self.clip_grad < 0:
            raise RtpulseError("--pvu-steps and --clip-grad must be ≥ 0")
        if not 0 <= self.ema < 1:
            raise RtpulseError(f"--ema is the average's decay per step, in [0, 1) (0 = off), got {self.ema:g}")
        if not 0 < self.prior < 1:
            raise RtpulseError(f"--prior must be in (0, 1), got {self.prior}")
        # Kiryo et al.: β ≥ 0 and 0 ≤ γ ≤ 1, else the correction raises a non-negative risk or drives it negative
        if self.beta < 0 or not 0 <= self.gamma <= 1:
            raise RtpulseError(f"--beta must be ≥ 0 and --gamma in [0, 1], got {self.beta:g} and {self.gamma:g}")
        for name in ("epochs", "steps_per_epoch", "batch_size", "dev_count"):
            if getattr(self, name) < 1:
                raise RtpulseError(f"--{name.replace('_', '-')} must be ≥ 1")
        if self.minutes is not None and not 0 < self.minutes <= 1e6:
            raise RtpulseError(f"--minutes must be above 0 (and at most 10^6), got {self.minutes:g}")
        steps = self.epochs * self.steps_per_epoch
        if self.method == "pu" and self.risk != "pvu" and self.pvu_steps >= steps:
            # warm-start epochs never compete for best: best.safetensors would stay epoch 1 whatever the scores
            raise RtpulseError(f"--pvu-steps {self.pvu_steps} covers all {steps} steps (--epochs × --steps-per-epoch): "
                               f"the run would never reach --risk {self.risk}; lower it, or use --risk pvu")
        if self.crop_seconds * 16000 < 1024 or self.dev_seconds * 16000 < 1024:
            raise RtpulseError("--crop-seconds and --dev-seconds must be at least 0.064 s (one STFT frame)")
        # upper bounds: far above any use, low enough that a typo is refused before it asks for terabytes
        if self.crop_seconds > 60 or self.dev_seconds > 60:
            raise RtpulseError("--crop-seconds and --dev-seconds must be at most 60 s")
        if self.batch_size > 4096 or self.dev_count > 10_000:
            raise RtpulseError("--batch-size must be ≤ 4096 and --dev-count ≤ 10000")
        if self.warmup_steps < 0:
            raise RtpulseError("--warmup-steps must be ≥ 0")
        if not 0 <= self.seed < 2**32:  # numpy's SeedSequence takes no negative seed
            raise RtpulseError(f"--seed must be 0…{2**32 - 1}, got {self.seed}")
        for name in ("level_frames", "floor_frames"):  # checked here too, before any audio is decoded
            if not 0 <= getattr(self, name) <= 1000:
                raise RtpulseError(f"--{name.replace('_', '-')} must be 0…1000")
        if not 0 <= self.context_seconds <= 60:
            raise RtpulseError("--context-seconds must be 0…60")
        if 0 < self.context_seconds < 256 / 16000:
            raise RtpulseError("--context-seconds must be 0 or at least one hop (0.016 s)")
        if self.context_seconds > 0 and not (self.level_frames or self.floor_frames):
            raise RtpulseError("--context-seconds feeds the level/floor trackers: give --level-frames or --floor-frames")
        if self.p_gain == "u" and (self.method != "pu" or not self.level_frames):
            raise RtpulseError("--p-gain u is the level gain of PU's P clips: it needs --method pu and --level-frames")
        if self.lr_schedule not in ("constant", "cosine"):
            raise RtpulseError(f"--lr-schedule must be constant or cosine, got {self.lr_schedule!r}")
        if self.output_bias is not None and not -100 <= self.output_bias <= 100:  # σ is 0 or 1 long before ±100
            raise RtpulseError(f"--output-bias must be −100…100, got {self.output_bias:g}")
        if self.lr <= 0:
            raise RtpulseError("--lr must be > 0")
        if self.select_mask not in ("binary", "soft"):
            raise RtpulseError("--select-mask must be binary or soft")
        if not MIN_FREQ_SCALE <= self.freq_scale <= MAX_FREQ_SCALE:
            raise RtpulseError(f"--freq-scale must be {MIN_FREQ_SCALE:g}…{MAX_FREQ_SCALE:g}")
        if self.freq_scale != FREQ_SCALE and not self.freq_input:
            raise RtpulseError("--freq-scale sets the range of --freq-input's channel: give --freq-input")
        self.model_config()  # preset, lookahead, compress …: refused here, before any audio is decoded
        _check_device(self.device)
        _check_precision(self.precision, self.device)
        return self

    def model_config(self) -> ModelConfig:
        """The architecture this run trains."""
        return ModelConfig(preset=self.preset, compress=self.compress, lookahead=self.lookahead, method=self.method,
                           out_channels=3 if self.method == "mixit" else 1, dropout=self.dropout,
                           level_frames=self.level_frames, floor_frames=self.floor_frames,
                           freq_input=self.freq_input, freq_scale=self.freq_scale, band_input=self.band_input)

    @property
    def p_mix_margin(self) -> float:
        return P_MIX_MARGIN_DB if self.p_mix_margin_db is None else self.p_mix_margin_db

    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    def with_absolute_paths(self) -> TrainConfig:
        """The data, cache and init paths made absolute (symlinks kept), as a new run stores them: a run resumed
        from another working directory then reads the same files, never ones that sit at the same relative path."""
        fields = ("clean", "noise", "noisy", "val_clean", "val_noise", "cache", "init_from")
        return dataclasses.replace(self, **{k: os.path.abspath(v) for k in fields if (v := getattr(self, k))})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        kept = {}
        for f in dataclasses.fields(cls):  # each value must have its annotated type ("float | None" …)
            if f.name not in data:
                continue
            value, names = data[f.name], [t.strip() for t in str(f.type).split("|")]
            if isinstance(value, int) and not isinstance(value, bool) and "float" in names:
                value = float(value)  # a hand edit may say 1 for 1.0
            if not any(value is None if n == "None" else type(value) is _JSON_TYPES[n] for n in names):
                raise ValueError(f"{f.name}: expected {f.type}, got {value!r}")
            kept[f.name] = value
        return cls(**kept)


def _check_device(name: str | None) -> None:
    """A device torch knows and this machine has (``None``/auto: CUDA when available, else CPU)."""
    if name in (None, "", "auto"):
        return
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError:
        raise RtpulseError(f"--device {name!r} is not a device (cpu, cuda, cuda:1 …)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RtpulseError(f"--device {name}: this machine (or this torch build) has no CUDA; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise RtpulseError(f"--device {name}: training runs on cpu or cuda")


def effective_precision(precision: str, device_type: str) -> str:
    """What --precision means on this device: "bf16" (the model under bf16 autocast) or "fp32"."""
    return "bf16" if precision == "bf16" or (precision == "auto" and device_type == "cuda") else "fp32"


def _check_precision(precision: str, device: str | None) -> None:
    """auto, fp32 or bf16; bf16 on a CPU only where it has native bf16 (emulated, it is slower than float32)."""
    if precision not in ("auto", "fp32", "bf16"):
        raise RtpulseError(f"--precision must be auto, fp32 or bf16, got {precision!r}")
    if precision != "bf16":
        return
    from trainer.ddp import pick_device  # the device the run will use

    if pick_device(device).type == "cpu" and not cpu_has_native_bf16():
        raise RtpulseError("--precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), where it would run "
                           "slower than float32; use --precision fp32")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively: AVX512-BF16 or AMX on x86, the BF16 extension on Arm.

    (oneDNN's own ``_is_mkldnn_bf16_supported`` is true on any AVX512 CPU, where it emulates bf16 at half fp32's
    speed.) False when it cannot tell."""
    import torch

    try:
        if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
            probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None),
                      getattr(torch.cpu, "_is_amx_tile_supported", None))
            return any(bool(probe()) for probe in probes if probe is not None)
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("Features"))
        return "bf16" in flags.split(":", 1)[1].split()  # Arm Linux: the FEAT_BF16 hwcap
    except Exception:  # noqa: BLE001 — a private probe gone, no /proc: say no, and --precision bf16 is refused
        return False
