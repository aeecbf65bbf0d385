"""Soak: push an hour of audio through :class:`rtpulse.stream.StreamingDenoiser` as fast as it goes.

Checks that memory stays flat (RSS and tracemalloc sampled from start to end) and that the delay is
constant to the sample: impulses planted in short stretches of silence at several times through the
hour must come out exactly ``engine.delay`` samples later, equal (to float tolerance) to the offline
enhancement of the same impulse — the same response at minute 59 as at minute 1.

    python -m benchmarks.soak --seconds 3600            # → benchmarks/results/soak.json + soak.md
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from rtpulse.errors import RtpulseError
from rtpulse.files import check_output_dir, probe_writable_dir, write_text_atomic
from rtpulse.model import ModelConfig, PulseCNN, load_model
from rtpulse.stft import HOP, SAMPLE_RATE
from rtpulse.stream import StreamingDenoiser, enhance

RESULTS = Path(__file__).parent / "results"
FLAT_RSS_MB = 4.0  # growth over the second half that still counts as flat (RSS moves by pages and allocator pools)
FLAT_TRACED_MB = 0.5
SEARCH = 300  # ± samples searched around the declared delay when measuring it
PHASE = 100  # every impulse, planted and reference, sits this many samples into a hop: a response depends on it


def rss_mb() -> float:
    """Resident set size now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def _quiet(model: PulseCNN) -> int:
    """Silence around each impulse: everything one output frame depends on (the receptive field and the level
    normaliser's window, model.past_frames) plus a frame on each side, with margin."""
    return 2 * (1024 + HOP * (model.past_frames + model.lookahead + 2))


def min_seconds(model: PulseCNN, impulses: int = 8) -> float:
    """The shortest run that holds the impulse plan: a second plus the silence at each end, and impulses more
    than ``quiet`` apart (a closer one would sit in its neighbour's silence and be zeroed)."""
    quiet = _quiet(model)
    need = 2 * (quiet + SAMPLE_RATE) + (impulses - 1) * (quiet + HOP)
    return math.ceil(need / SAMPLE_RATE * 10) / 10  # rounded up to 0.1 s, so the number given is enough


def check_seconds(seconds: float, model: PulseCNN, impulses: int = 8) -> None:
    """A one-line error for a run too short (or not finite) to measure anything."""
    low = min_seconds(model, impulses)
    if not (math.isfinite(seconds) and seconds >= low):  # written so that NaN is refused too
        raise RtpulseError(f"--seconds must be at least {low:g} for this model ({impulses} impulses, each in "
                           f"{_quiet(model) / SAMPLE_RATE:.2f} s of silence), got {seconds:g}")


def soak_model(seed: int = 0) -> PulseCNN:
    """The model soaked when none is given: a random blocks2 (the delay and memory checks need no training)."""
    torch.manual_seed(seed)
    return PulseCNN(ModelConfig(preset="blocks2")).eval()


def _impulse_plan(total: int, count: int, quiet: int) -> list[int]:
    """Impulse positions spread over the run, all at the same hop phase (so all responses are identical)."""
    spots = np.linspace(quiet + SAMPLE_RATE, total - quiet - SAMPLE_RATE, count).astype(int)
    return [int(s - s % HOP + PHASE) for s in spots]


def run_soak(
    seconds: float = 3600.0,
    model: PulseCNN | None = None,
    impulses: int = 8,
    max_chunk: int = 4096,
    seed: int = 0,
    samples: int = 40,
    progress=None,
) -> dict:
    """Stream ``seconds`` of generated audio; returns the measurements (memory, delays, speed) as a dict.

    ``progress(done_samples, total_samples)`` is called now and then (for a progress bar). A run shorter than
    :func:`min_seconds` is a :class:`RtpulseError`.
    """
    torch.set_num_threads(1)  # the engine's real-time configuration: one hop at a time on one core
    if model is None:
        model = soak_model(seed)
    check_seconds(seconds, model, impulses)
    engine = StreamingDenoiser(model, mask="soft")  # soft: every bin passes a little, so impulses show
    delay, lookahead = engine.delay, model.lookahead
    quiet = _quiet(model)
    half_window = quiet // 4
    total = int(seconds * SAMPLE_RATE)
    spots = _impulse_plan(total, impulses, quiet)

    # the reference: offline enhancement of one impulse in silence (offline index k == stream index k + delay)
    at = quiet - quiet % HOP + PHASE  # same hop phase as the planted impulses
    ref_in = np.zeros(2 * quiet + HOP, np.float32)
    ref_in[at] = 0.5
    ref = enhance(model, torch.from_numpy(ref_in), mask="soft").numpy()
    ref_win = ref[at - half_window : at + half_window]

    rng = np.random.default_rng(seed)
    grabs = {s: np.full(2 * (half_window + SEARCH), np.nan, np.float32) for s in spots}
    grab_start = {s: s + delay - half_window - SEARCH for s in spots}
    memory: list[dict] = []
    peak_out, nonfinite = 0.0, 0
    pos = 0  # input samples consumed == output samples produced
    next_sample = 0
    engine_s = 0.0  # the engine's own time: around process() alone (the loop also makes audio and runs tracemalloc)
    t0 = time.perf_counter()
    tracemalloc.start()
    while pos < total:
        n = int(min(total - pos, max(1, round(np.exp(rng.uniform(0, np.log(max_chunk)))))))
        t = np.arange(pos, pos + n)
        x = 0.1 * np.sin(2 * np.pi * 220 * t / SAMPLE_RATE) + 0.05 * rng.standard_normal(n)
        for s in spots:  # silence around each planted impulse
            lo, hi = max(s - quiet, pos), min(s + quiet + 1, pos + n)
            if lo < hi:
                x[lo - pos : hi - pos] = 0.0
            if pos <= s < pos + n:
                x[s - pos] = 0.5
        x32 = x.astype(np.float32)
        started = time.perf_counter()
        y = engine.process(x32)
        engine_s += time.perf_counter() - started
        nonfinite += int(np.count_nonzero(~np.isfinite(y)))
        peak_out = max(peak_out, float(np.abs(y).max()))
        for s in spots:
            lo, hi = max(grab_start[s], pos), min(grab_start[s] + grabs[s].size, pos + n)
            if lo < hi:
                grabs[s][lo - grab_start[s] : hi - grab_start[s]] = y[lo - pos : hi - pos]
        pos += n
        if pos >= next_sample or pos >= total:
            current, _ = tracemalloc.get_traced_memory()
            memory.append({"audio_s": pos / SAMPLE_RATE, "rss_mb": rss_mb(), "traced_mb": current / 2**20})
            next_sample += max(1, total // samples)
            if progress is not None:
                progress(pos, total)
    wall = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    found = []
    for s in spots:
        got = grabs[s]
        errs = [float(np.max(np.abs(got[k : k + ref_win.size] - ref_win))) for k in range(2 * SEARCH)]
        best = int(np.argmin(errs))
        found.append({
            "at_s": s / SAMPLE_RATE,
            "measured_delay": delay - SEARCH + best,
            "max_abs_diff_at_declared_delay": errs[SEARCH],
        })
    # memory after the first sample (imports, first allocations) vs the end; a leak shows as growth over the second
    # half, when everything the engine keeps is long allocated (torch's allocator is invisible to tracemalloc: RSS)
    first, middle, last = memory[min(1, len(memory) - 1)], memory[len(memory) // 2], memory[-1]
    rss_growth = last["rss_mb"] - middle["rss_mb"]
    traced_growth = last["traced_mb"] - middle["traced_mb"]
    return {
        "audio_seconds": total / SAMPLE_RATE,
        "wall_seconds": wall,
        "engine_seconds": engine_s,
        # the engine's time per second of audio, under tracemalloc (which slows Python's allocations a little)
        "real_time_factor": engine_s / (total / SAMPLE_RATE),
        "rss_mb_growth_second_half": rss_growth,
        "traced_mb_growth_second_half": traced_growth,
        "memory_flat": rss_growth <= FLAT_RSS_MB and traced_growth <= FLAT_TRACED_MB,
        "preset": model.config.preset,
        "lookahead": lookahead,
        "declared_delay": delay,
        "impulses": found,
        "delay_constant": all(f["measured_delay"] == delay for f in found),
        "max_abs_diff": max(f["max_abs_diff_at_declared_delay"] for f in found),
        "reference_peak": float(np.abs(ref_win).max()),
        "rss_mb_start": first["rss_mb"],
        "rss_mb_end": last["rss_mb"],
        "traced_mb_start": first["traced_mb"],
        "traced_mb_end": last["traced_mb"],
        "traced_mb_peak": traced_peak / 2**20,
        "memory": memory,
        "output_peak": peak_out,
        "nonfinite_outputs": nonfinite,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": 1},
    }


def write_results(result: dict, out_dir: Path = RESULTS) -> tuple[Path, Path]:
    """JSON with everything, and a short markdown summary."""
    js, md = out_dir / "soak.json", out_dir / "soak.md"
    write_text_atomic(js, json.dumps(result, indent=2))
    r = result
    lines = [
        f"# Soak: {r['audio_seconds'] / 60:.3g} min of audio through StreamingDenoiser ({r['preset']}, L={r['lookahead']})",
        "",
        (f"- engine time {r['engine_seconds']:.0f} s, real-time factor {r['real_time_factor']:.3f} (1 thread; the "
         f"whole loop, with the test signal and tracemalloc, {r['wall_seconds']:.0f} s)"),
        (f"- RSS {r['rss_mb_start']:.1f} → {r['rss_mb_end']:.1f} MB; tracemalloc {r['traced_mb_start']:.2f} → "
         f"{r['traced_mb_end']:.2f} MB (peak {r['traced_mb_peak']:.2f} MB); second half: RSS "
         f"{r['rss_mb_growth_second_half']:+.1f} MB, traced {r['traced_mb_growth_second_half']:+.2f} MB → "
         f"flat: {r['memory_flat']}"),
        (f"- delay declared {r['declared_delay']} samples; measured at {len(r['impulses'])} impulses: "
         f"{sorted({i['measured_delay'] for i in r['impulses']})}; constant: {r['delay_constant']}"),
        f"- max |stream − offline| at the impulses: {r['max_abs_diff']:.2e} (response peak {r['reference_peak']:.3f})",
        f"- non-finite output samples: {r['nonfinite_outputs']}; output peak {r['output_peak']:.3f}",
        "",
        "| impulse at (s) | measured delay | max abs diff |",
        "|---:|---:|---:|",
        *(f"| {i['at_s']:.1f} | {i['measured_delay']} | {i['max_abs_diff_at_declared_delay']:.1e} |"
          for i in r["impulses"]),
        "",
        f"Command: `python -m benchmarks.soak --seconds {r['audio_seconds']:g}"
        + (f" --model {shlex.quote(r['model_file'])}`" if r.get("model_file") else "`"),
    ]
    write_text_atomic(md, "\n".join(lines) + "\n")
    return js, md


def main() -> None:
    import argparse

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3600.0, help="audio to stream (default: one hour; at least ~7 s, more for models with a wider receptive field)")
    p.add_argument("--model", type=Path, default=None, help="model file (default: random blocks2)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    try:
        # output, model and length checked before the progress bar starts: a bad one is one line, nothing else
        check_output_dir(args.out)
        probe_writable_dir(args.out)  # an hour of work must not end in "cannot write"
        model = load_model(args.model) if args.model else soak_model()
        check_seconds(args.seconds, model)
        with Progress(
            TextColumn("soak"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeRemainingColumn()
        ) as bar:
            task = bar.add_task("soak", total=1.0)
            result = run_soak(
                args.seconds, model, progress=lambda done, total: bar.update(task, completed=done / total)
            )
        if args.model:
            result["model_file"] = str(args.model)
        js, md = write_results(result, args.out)
    except RtpulseError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(md.read_text())
    print(f"wrote {js} and {md}")


if __name__ == "__main__":
    main()
