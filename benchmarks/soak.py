"""Soak: push an hour of audio through :class:`rtpulse.stream.StreamingDenoiser` as fast as it goes.

Checks that memory stays flat (RSS and tracemalloc sampled from start to end) and that the delay is
constant to the sample: impulses planted in short stretches of silence at several times through the
hour must come out exactly ``engine.delay`` samples later, equal (to float tolerance) to the offline
enhancement of the same impulse — the same response at minute 59 as at minute 1.

    python -m benchmarks.soak --seconds 3600            # → benchmarks/results/soak.json + soak.md
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from rtpulse.model import ModelConfig, PulseCNN, load_model
from rtpulse.stft import HOP, SAMPLE_RATE
from rtpulse.stream import StreamingDenoiser, enhance

RESULTS = Path(__file__).parent / "results"
SEARCH = 300  # ± samples searched around the declared delay when measuring it
PHASE = 100  # every impulse, planted and reference, sits this many samples into a hop: a response depends on it


def rss_mb() -> float:
    """Resident set size now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


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

    ``progress(done_samples, total_samples)`` is called now and then (for a progress bar).
    """
    torch.set_num_threads(1)  # the engine's real-time configuration: one hop at a time on one core
    if model is None:
        torch.manual_seed(seed)
        model = PulseCNN(ModelConfig(preset="blocks2")).eval()
    engine = StreamingDenoiser(model, mask="soft")  # soft: every bin passes a little, so impulses show
    delay, lookahead = engine.delay, model.lookahead
    # silence around each impulse: everything one output frame depends on (the receptive field and the level
    # normaliser's window, model.past_frames) plus a frame on each side, with margin
    quiet = 2 * (1024 + HOP * (model.past_frames + lookahead + 2))
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
        y = engine.process(x.astype(np.float32))
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
    # memory after the first sample (imports, first allocations) vs the end
    first, last = memory[min(1, len(memory) - 1)], memory[-1]
    return {
        "audio_seconds": total / SAMPLE_RATE,
        "wall_seconds": wall,
        "real_time_factor": wall / (total / SAMPLE_RATE),
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
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "soak.json", out_dir / "soak.md"
    tmp = js.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, js)
    r = result
    lines = [
        f"# Soak: {r['audio_seconds'] / 60:.0f} min of audio through StreamingDenoiser ({r['preset']}, L={r['lookahead']})",
        "",
        f"- wall time {r['wall_seconds']:.0f} s, real-time factor {r['real_time_factor']:.3f} (1 thread)",
        (f"- RSS {r['rss_mb_start']:.1f} → {r['rss_mb_end']:.1f} MB; tracemalloc {r['traced_mb_start']:.2f} → "
         f"{r['traced_mb_end']:.2f} MB (peak {r['traced_mb_peak']:.2f} MB)"),
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
        f"Command: `python -m benchmarks.soak --seconds {r['audio_seconds']:.0f}"
        + (f" --model {shlex.quote(r['model_file'])}`" if r.get("model_file") else "`"),
    ]
    md.write_text("\n".join(lines) + "\n")
    return js, md


def main() -> None:
    import argparse

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3600.0, help="audio to stream (default: one hour)")
    p.add_argument("--model", type=Path, default=None, help="model file (default: random blocks2)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    model = load_model(args.model) if args.model else None
    with Progress(TextColumn("soak"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeRemainingColumn()) as bar:
        task = bar.add_task("soak", total=1.0)
        result = run_soak(args.seconds, model, progress=lambda done, total: bar.update(task, completed=done / total))
    if args.model:
        result["model_file"] = str(args.model)
    js, md = write_results(result, args.out)
    print(md.read_text())
    print(f"wrote {js} and {md}")


if __name__ == "__main__":
    main()
