"""Training speed: U clips/s of one full trainer step (STFT, model, PU risk, backward, Adam) by precision and malloc.

Four variants per preset: ``--precision fp32`` or ``bf16``, each with glibc's default malloc or with
:func:`trainer.memory.keep_freed_memory` (what ``rtpulse train`` does since session 15). Each variant is timed in
its own fresh process (malloc settings last for a process), in alternating rounds within one run so that a busy
machine slows all alike; the figures to read are the ratios to the old default (fp32, default malloc). Random
waveforms stand in for audio (compute time does not depend on the values). ``loss_rel_diff`` is |loss bf16 − loss
fp32| / |loss fp32| on the same batch and weights: what the cheaper arithmetic changes in one step.

Run: ``python -m benchmarks.train_speed`` (writes results/train_speed.md and .json).
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from rtpulse.errors import RtpulseError
from rtpulse.files import check_output_dir, write_text_atomic
from rtpulse.stft import SAMPLE_RATE
from trainer.config import TrainConfig, cpu_has_native_bf16
from trainer.data import Batch
from trainer.memory import keep_freed_memory
from trainer.train import build_model, compute_loss, train_step

RESULTS_DIR = Path(__file__).parent / "results"
PRESETS = ("blocks2", "blocks3", "paper")
VARIANTS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))  # (precision, keep freed memory)


def _config(preset: str, precision: str) -> TrainConfig:
    """The shipped recipe's model settings (blocks3 and paper with the frequency input)."""
    return TrainConfig(out="unused", clean="c", noise="n", preset=preset, freq_input=preset != "blocks2", lookahead=2,
                       level_frames=125, compress="linear", dropout=0.0, init="he", clip_grad=1.0,
                       precision=precision, device="cpu")


def _batch(batch_size: int, seconds: float) -> Batch:
    g = torch.Generator().manual_seed(0)
    n = round(seconds * SAMPLE_RATE)
    return Batch(u=torch.randn(batch_size, n, generator=g), p=torch.randn(batch_size, n, generator=g))


def step_seconds(preset: str, precision: str, keep: bool, batch_size: int, seconds: float, steps: int,
                 threads: int) -> list[float]:
    """In this process: wall time of ``steps`` trainer steps after two warm-up steps (oneDNN picks its kernels)."""
    if keep and not keep_freed_memory():
        raise RtpulseError("this libc has no mallopt: the kept-memory variants cannot run")
    torch.set_num_threads(threads)
    cfg, batch = _config(preset, precision), _batch(batch_size, seconds)
    model = build_model(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)  # as the trainer's
    for _ in range(2):
        train_step(model, optimizer, batch, cfg)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        train_step(model, optimizer, batch, cfg)
        times.append(time.perf_counter() - t0)
    return times


def _in_fresh_process(*args) -> list[float]:
    code = "import json, sys; from benchmarks.train_speed import step_seconds; print(json.dumps(step_seconds(*json.loads(sys.argv[1]))))"
    try:
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], check=False, capture_output=True,
                              text=True, timeout=3600)
    except subprocess.TimeoutExpired:
        raise RtpulseError(f"a timing process ran over an hour: {args}") from None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = proc.stderr.strip().splitlines()
        raise RtpulseError(f"a timing process failed: {err[-1] if err else f'exit status {proc.returncode}'}")
    return json.loads(lines[-1])


def loss_rel_diff(preset: str, batch: Batch) -> float:
    losses = []
    for precision in ("fp32", "bf16"):
        cfg = _config(preset, precision)
        torch.manual_seed(0)  # the same weights for both
        with torch.no_grad():
            losses.append(float(compute_loss(build_model(cfg), batch, cfg)[0]))
    return abs(losses[1] - losses[0]) / abs(losses[0])


def cpu_name() -> str:
    """The CPU's model name (Linux), else the architecture."""
    try:
        line = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name"))
        return line.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        return platform.machine()


def _key(precision: str, keep: bool) -> str:
    return f"{precision}_{'kept' if keep else 'default'}"


def measure(presets=PRESETS, batch_size: int = 8, seconds: float = 1.0, rounds: int = 3, steps: int = 2,
            threads: int = 2) -> dict:
    if not cpu_has_native_bf16():
        raise RtpulseError("this CPU has no native bf16 (AVX512-BF16 or AMX): --precision bf16 is refused here")
    rows = []
    for preset in presets:
        times = {_key(*v): [] for v in VARIANTS}
        for _ in range(rounds):  # alternate, so that load on the machine hits every variant alike
            for precision, keep in VARIANTS:
                times[_key(precision, keep)] += _in_fresh_process(preset, precision, keep, batch_size, seconds,
                                                                  steps, threads)
        median = {k: statistics.median(t) for k, t in times.items()}
        base = median["fp32_default"]
        rows.append({"preset": preset, "steps_timed": rounds * steps,
                     "clips_s": {k: batch_size / m for k, m in median.items()},
                     "speedup": {k: base / m for k, m in median.items()},
                     "loss_rel_diff": loss_rel_diff(preset, _batch(batch_size, seconds))})
    return {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": cpu_name(),
            "threads": threads, "torch": torch.__version__, "batch_u_clips": batch_size, "clip_seconds": seconds,
            "rows": rows}


def to_markdown(result: dict) -> str:
    lines = [
        "# Training speed: precision and malloc, on this CPU",
        "",
        (f"One trainer step = {result['batch_u_clips']} U + {result['batch_u_clips']} P clips of "
        f"{result['clip_seconds']:g} s (STFT, model, PU risk, backward, Adam); {result['machine']}, "
        f"{result['threads']} threads, torch {result['torch']}, {result['when']}. U clips/s, and in brackets the speed-up over fp32 with glibc's default "
        "malloc (the trainer before session 15). \"kept\": freed memory kept mapped (`trainer.memory`, what `rtpulse "
        "train` does now). Each variant runs in its own process, in alternating rounds in one run; the ratios are "
        "the figures to read (this machine is shared). `python -m benchmarks.train_speed`"),
        "",
        ("| preset | fp32, default malloc | fp32, kept | bf16, default malloc | bf16, kept (`--precision bf16`) "
         "| loss, bf16 vs fp32 |"),
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        cells = [f"{r['clips_s'][_key(*v)]:.2f} ({r['speedup'][_key(*v)]:.2f}×)" for v in VARIANTS]
        cells[-1] = f"**{cells[-1]}**"
        lines.append(f"| {r['preset']} | " + " | ".join(cells) + f" | {r['loss_rel_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args()
    if not (1 <= args.rounds <= 100 and 1 <= args.steps <= 100 and 1 <= args.threads <= 256):
        p.error("--rounds and --steps must be 1…100, --threads 1…256")
    try:
        check_output_dir(args.out)  # before minutes of timing
        result = measure(rounds=args.rounds, steps=args.steps, threads=args.threads)
        args.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out / "train_speed.json", json.dumps(result, indent=1) + "\n")
        write_text_atomic(args.out / "train_speed.md", to_markdown(result))
    except (RtpulseError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    print(to_markdown(result))


if __name__ == "__main__":
    main()
