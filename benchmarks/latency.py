"""Latency benchmark: measured delay, per-hop compute, real-time factor, cache gain, and peers' RTF.

For every configuration (shipped model, ``--model`` files, and the ``paper``/``blocks2`` presets at L = 0
and at their maximum lookahead with random weights — compute time does not depend on weight values):

- ``delay_samples_measured``: an impulse through :class:`rtpulse.stream.StreamingDenoiser`, located in the
  output; ``delay_samples_expected`` = 1024 + 256·L.
- ``hop_ms_p50/p99/max``: wall time of one engine hop (256 new samples → 256 out: STFT, model step, mask,
  iSTFT) with ``torch.set_num_threads(1)``, warm-up excluded; ``rtf`` = mean hop time / 16 ms.
- ``recompute_ratio``: time of an offline forward over the receptive field's frames (what a stateless
  engine would redo every hop) / time of one cached ``model.step``.

Peers: each peer's native per-10 ms process, timed the same way; ``rtf`` = mean time / 10 ms.

Run: ``python -m benchmarks.latency`` or ``rtpulse bench latency`` (same options).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from benchmarks.align import locate_delay
from rtpulse.errors import RtpulseError
from rtpulse.files import check_json_output, discard, probe_writable_dir, temp_beside, write_text_atomic
from rtpulse.model import ModelConfig, PulseCNN, count_parameters, default_model_path, load_model
from rtpulse.stft import HOP, N_BINS, SAMPLE_RATE
from rtpulse.stream import StreamingDenoiser, delay_samples

HOP_MS = 1000.0 * HOP / SAMPLE_RATE  # 16 ms
RESULTS_DIR = Path(__file__).parent / "results"


@dataclass
class Subject:
    """One configuration to measure."""

    name: str
    model: PulseCNN
    source: str  # "shipped", a file path, or "random weights"


@dataclass
class LatencyOptions:
    hops: int = 3000  # timed hops per configuration (48 s of audio): p99 rests on 30 samples
    warmup: int = 100
    models: list[Path] = field(default_factory=list)
    presets: bool = True
    peers: bool = True
    peer_blocks: int = 2000  # timed 10 ms blocks per peer
    profile: bool = True
    timing_repeats: int = 300  # repeats for the mean step / recompute times


def subjects(models: list[Path], presets: bool = True) -> tuple[list[Subject], list[str]]:
    """The configurations to measure, and notes on what was skipped."""
    out, notes = [], []
    shipped = default_model_path()
    if shipped.is_file():
        out.append(Subject("shipped", load_model(shipped), str(shipped)))
    else:
        notes.append(f"shipped model skipped: {shipped} does not exist yet")
    for path in models:
        out.append(Subject(Path(path).stem, load_model(path), str(path)))
    if presets:
        torch.manual_seed(0)
        for preset in ("paper", "blocks2"):
            for look in (0, ModelConfig(preset=preset).max_lookahead):
                cfg = ModelConfig(preset=preset, lookahead=look)
                out.append(Subject(f"{preset}-L{look}", PulseCNN(cfg).eval(), "random weights"))
    # a row's name keys its histogram curve: two models named alike (a user's "shipped.safetensors", two folders'
    # "best") would share one curve, showing the last one's times under both names
    seen: dict[str, int] = {}
    for s in out:
        seen[s.name] = seen.get(s.name, 0) + 1
        if seen[s.name] > 1:
            s.name = f"{s.name} #{seen[s.name]}"
    return out, notes


def measure_delay(model: PulseCNN, position: int = 3001) -> int:
    """An impulse at ``position`` through the streaming engine (soft mask: every gain > 0, so the
    impulse survives; each frame's gain is real and non-negative, so its peak stays in place)."""
    engine = StreamingDenoiser(model, mask="soft")
    max_lag = delay_samples(model.config.max_lookahead) + HOP
    x = np.zeros(position + max_lag + 2 * HOP, np.float32)
    x[position] = 1.0
    y = np.concatenate([engine.process(x[i : i + HOP]) for i in range(0, x.size, HOP)])
    return locate_delay(x, y, max_lag)


def time_hops(model: PulseCNN, hops: int, warmup: int) -> np.ndarray:
    """Wall time (ms) of each of ``hops`` engine hops after ``warmup`` untimed ones."""
    engine = StreamingDenoiser(model)
    rng = np.random.default_rng(0)
    blocks = (0.1 * rng.standard_normal((64, HOP))).astype(np.float32)
    for i in range(warmup):
        engine.process(blocks[i % 64])
    times = np.empty(hops)
    clock = time.perf_counter_ns
    for i in range(hops):
        t0 = clock()
        engine.process(blocks[i % 64])
        times[i] = (clock() - t0) / 1e6
    return times


def _mean_time_ms(fn, repeats: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter_ns()
    for _ in range(repeats):
        fn()
    return (time.perf_counter_ns() - t0) / 1e6 / repeats


def step_ms(model: PulseCNN, repeats: int = 500) -> float:
    """Mean time of one cached ``model.step`` (past the lookahead warm-up)."""
    state = model.init_state(1)
    col = torch.rand(1, N_BINS)
    return _mean_time_ms(lambda: model.step(col, state), repeats, warmup=model.lookahead + 20)


@torch.no_grad()
def recompute_ms(model: PulseCNN, repeats: int = 100) -> float:
    """Mean time of the offline forward over the receptive field's time span ``[1, 513, RF]``."""
    mag = torch.rand(1, N_BINS, model.receptive_field[1])
    return _mean_time_ms(lambda: model(mag), repeats, warmup=5)


def profile_step(model: PulseCNN, repeats: int = 200) -> dict:
    """Where a step's time goes, from torch's profiler over ``repeats`` steps (whatever ``step`` runs).

    ``layers``: the convolution calls grouped by input shape (one row per layer, except that layers of equal shapes,
    such as blocks3t's last three 3×3, share one), mean ms per step.
    ``ops_ms``: self time per torch op (profiled, so slightly inflated). ``gmac_per_s``: multiply-adds per
    second the unprofiled step achieves; ``rtf_at_30_gmacs``: the rtf its MACs alone would give at 30 GMAC/s
    (about what one core sustains on these shapes) — whether the step is compute- or overhead-bound.
    """
    from torch.profiler import ProfilerActivity, profile

    state = model.init_state(1)
    col = torch.rand(1, N_BINS)
    for _ in range(model.lookahead + 20):
        model.step(col, state)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(repeats):
            model.step(col, state)
    layers = [
        {
            "op": e.key,
            "input": " × ".join(str(x) for x in e.input_shapes[:2]),
            "ms": round(e.cpu_time_total / 1e3 / repeats, 4),
        }
        for e in prof.key_averages(group_by_input_shape=True)
        if e.key in ("aten::conv1d", "aten::conv2d")
    ]
    ops = sorted(((e.key, e.self_cpu_time_total / 1e3 / repeats) for e in prof.key_averages()), key=lambda kv: -kv[1])
    in_torch = sum(ms for _, ms in ops)
    wall = step_ms(model, repeats)
    macs = sum(c.in_channels * c.out_channels * c.kernel_size[0] * c.kernel_size[1] * N_BINS for c in model.convs)
    return {
        "step_ms": round(wall, 4),
        "conv_ms_sum": round(sum(la["ms"] for la in layers), 4),
        "torch_ops_ms": round(in_torch, 4),
        "mmacs_per_hop": round(macs / 1e6, 2),
        "gmac_per_s": round(macs / 1e6 / wall, 2),
        "rtf_at_30_gmacs": round(macs / 30e9 * 1e3 / HOP_MS, 4),
        "layers": layers,
        "ops_ms": {k: round(v, 4) for k, v in ops[:8]},
    }


def measure_subject(subject: Subject, opts: LatencyOptions) -> tuple[dict, np.ndarray]:
    model = subject.model.eval()
    look = model.lookahead
    hop_times = time_hops(model, opts.hops, opts.warmup)
    step = step_ms(model, opts.timing_repeats)
    recompute = recompute_ms(model, max(5, opts.timing_repeats // 3))
    row = {
        "name": subject.name,
        "preset": model.config.preset,
        "lookahead": look,
        "source": subject.source,
        "parameters": count_parameters(model),
        "delay_samples_measured": measure_delay(model),
        "delay_samples_expected": delay_samples(look),
        "hop_ms_p50": round(float(np.percentile(hop_times, 50)), 4),
        "hop_ms_p99": round(float(np.percentile(hop_times, 99)), 4),
        "hop_ms_max": round(float(hop_times.max()), 4),
        "hop_ms_mean": round(float(hop_times.mean()), 4),
        "rtf": round(float(hop_times.mean()) / HOP_MS, 4),
        "rtf_p50": round(float(np.percentile(hop_times, 50)) / HOP_MS, 4),  # robust to time-slicing by other jobs
        "step_ms": round(step, 4),
        "recompute_ms": round(recompute, 4),
        "recompute_ratio": round(recompute / step, 2),
    }
    row["delay_ms"] = 1000.0 * row["delay_samples_measured"] / SAMPLE_RATE
    return row, hop_times


def measure_peers(blocks: int, warmup: int = 100) -> tuple[list[dict], dict[str, str]]:
    from benchmarks.peers import load_peers

    peers, skipped = load_peers(streaming_only=True)
    rows = []
    for peer in peers:
        run = peer.block()
        for _ in range(warmup):
            run()
        times = np.empty(blocks)
        for i in range(blocks):
            t0 = time.perf_counter_ns()
            run()
            times[i] = (time.perf_counter_ns() - t0) / 1e6
        rows.append(
            {
                "name": peer.name,
                "package": peer.package,
                "rate": peer.rate,
                "frame": peer.frame,
                "block_ms_p50": round(float(np.percentile(times, 50)), 4),
                "block_ms_p99": round(float(np.percentile(times, 99)), 4),
                "rtf": round(float(times.mean()) / 10.0, 4),
                "rtf_p50": round(float(np.percentile(times, 50)) / 10.0, 4),
                "algorithmic_delay_ms": peer.algorithmic_delay_ms,
                "documented_delay_ms": peer.documented_delay_ms,
                "delay_note": peer.delay_note,
            }
        )
    return rows, skipped


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


@torch.no_grad()
def gpu_section(subjects_: list[Subject], hops: int = 500, warmup: int = 50) -> dict | None:
    """On a CUDA GPU: per-hop step latency including host↔device transfers, and batched offline throughput."""
    if not torch.cuda.is_available():
        return None
    dev = torch.device("cuda")
    out = {"gpu": torch.cuda.get_device_name(0), "configs": []}
    for s in subjects_:
        model = PulseCNN(s.model.config).to(dev).eval()
        model.load_state_dict(s.model.state_dict())
        state = model.init_state(1)
        col = torch.rand(1, N_BINS)
        times = []
        for i in range(hops + warmup):
            t0 = time.perf_counter_ns()
            y = model.step(col.to(dev), state)
            if y is not None:
                y.cpu()
            torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter_ns() - t0) / 1e6)
        frames, batch = 625, 64  # 10 s clips
        mag = torch.rand(batch, N_BINS, frames, device=dev)
        model(mag)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        reps = 5
        for _ in range(reps):
            model(mag)
        torch.cuda.synchronize()
        sec = (time.perf_counter() - t0) / reps
        out["configs"].append(
            {
                "name": s.name,
                "hop_ms_p50": round(float(np.percentile(times, 50)), 4),
                "hop_ms_p99": round(float(np.percentile(times, 99)), 4),
                "offline_audio_seconds_per_second": round(batch * frames * HOP / SAMPLE_RATE / sec, 1),
                "batch": batch,
            }
        )
        del model, mag
    return out


def run_latency(opts: LatencyOptions, progress=None) -> tuple[dict, dict[str, np.ndarray]]:
    """Measure everything; returns (result dict, hop times per configuration)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        subs, notes = subjects(opts.models, opts.presets)
        configs, hist = [], {}
        for s in subs:
            if progress:
                progress(f"timing {s.name}")
            row, times = measure_subject(s, opts)
            if opts.profile and row["rtf"] > 0.04:
                row["profile"] = profile_step(s.model)
            configs.append(row)
            hist[s.name] = times
        peers, skipped = ([], {}) if not opts.peers else measure_peers(opts.peer_blocks)
        if progress:
            progress("GPU")
        gpu = gpu_section(subs, opts.hops, opts.warmup)
        result = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine() | {"threads": 1},
            "hops": opts.hops,
            "warmup": opts.warmup,
            "configs": configs,
            "peers": peers,
            "peers_skipped": skipped,
            "notes": notes
            + [
                (
                    "rtf: mean per-hop wall time / hop duration (rtpulse: 16 ms hop; peers: per 10 ms of audio, "
                    "native rate, resampling excluded); one thread; other processes shared the machine, so compare "
                    "ratios within one run"
                ),
                "recompute_ratio: offline forward over the receptive field's frames / one cached model.step",
            ],
            "gpu": gpu,
        }
        return result, hist
    finally:
        torch.set_num_threads(threads)


def markdown(result: dict) -> str:
    lines = [
        f"Latency — {result['machine']['cpu']}, 1 thread, {result['date']}",
        "",
        (
            "| config | preset | L | params | delay measured / expected (samples) | delay ms | hop p50 ms "
            "| hop p99 ms | hop max ms | rtf (mean) | rtf (p50) | recompute ratio |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["configs"]:
        ok = "" if c["delay_samples_measured"] == c["delay_samples_expected"] else " ✗"
        lines.append(
            f"| {c['name']} | {c['preset']} | {c['lookahead']} | {c['parameters']:,} | {c['delay_samples_measured']} / "
            f"{c['delay_samples_expected']}{ok} | {c['delay_ms']:.0f} | {c['hop_ms_p50']:.2f} | {c['hop_ms_p99']:.2f} | "
            f"{c['hop_ms_max']:.2f} | {c['rtf']:.3f} | {c['rtf_p50']:.3f} | {c['recompute_ratio']:.1f} |"
        )
    if result["peers"] or result["peers_skipped"]:
        lines += [
            "",
            (
                "| peer | package | rate | rtf (mean, per 10 ms) | rtf (p50) | delay ms (raw stream; bench quality's lag 0 checks it) "
                "| documented ms |"
            ),
            "|---|---|---|---|---|---|---|",
        ]
        for p in result["peers"]:
            doc = "—" if p["documented_delay_ms"] is None else f"{p['documented_delay_ms']:.0f}"
            lines.append(
                f"| {p['name']} | {p['package']} | {p['rate']} | {p['rtf']:.3f} | {p['rtf_p50']:.3f} | "
                f"{p['algorithmic_delay_ms']:.0f} | {doc} |"
            )
        for name, why in result["peers_skipped"].items():
            lines.append(f"| {name} | skipped: {why} | | | | | |")
    profiled = [c for c in result["configs"] if "profile" in c]
    if profiled:
        lines += ["", "Step profile (configs with rtf > 0.04), torch profiler, ms per step", ""]
        for c in profiled:
            p = c["profile"]
            per_layer = ", ".join(f"{la['input']}: {la['ms']:.3f}" for la in p["layers"])
            top = ", ".join(f"{k} {v:.3f}" for k, v in p["ops_ms"].items())
            lines.append(
                f"- {c['name']}: step {p['step_ms']:.3f} ms wall, Σ conv {p['conv_ms_sum']:.3f}, torch ops "
                f"{p['torch_ops_ms']:.3f}; {p['mmacs_per_hop']} M MAC/hop = {p['gmac_per_s']} GMAC/s achieved "
                f"(rtf {p['rtf_at_30_gmacs']:.3f} at 30 GMAC/s). Conv per input shape: {per_layer}. Top ops (self): {top}"
            )
    if result.get("gpu"):
        lines += [
            "",
            f"GPU ({result['gpu']['gpu']}): per-hop step incl. transfers and batched offline throughput",
            "",
            "| config | hop p50 ms | hop p99 ms | offline s of audio / s |",
            "|---|---|---|---|",
        ]
        for g in result["gpu"]["configs"]:
            lines.append(
                f"| {g['name']} | {g['hop_ms_p50']:.3f} | {g['hop_ms_p99']:.3f} | "
                f"{g['offline_audio_seconds_per_second']:,} |"
            )
    lines += ["", *[f"- {n}" for n in result["notes"]]]
    return "\n".join(lines) + "\n"


def plot_histogram(hist: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    hi = max(float(np.percentile(t, 99.5)) for t in hist.values())
    bins = np.linspace(0, hi * 1.05, 80)
    for name, t in hist.items():
        ax.hist(
            np.clip(t, 0, bins[-1]),
            bins=bins,
            histtype="step",
            linewidth=1.5,
            label=f"{name} (p99 {np.percentile(t, 99):.2f} ms)",
        )
    ax.set_xlabel("per-hop compute (ms, 1 thread; last bin includes the tail)")
    ax.set_ylabel("hops (log)")
    ax.set_yscale("log")
    ax.set_title(f"rtpulse streaming hop time (budget {HOP_MS:.0f} ms per hop)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def _save_fig(fig, path: Path) -> None:
    tmp = temp_beside(path, ".png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        discard(tmp)


def latency_outputs(json_path: Path) -> list[Path]:
    """The files a latency run writes: the JSON, the markdown table and the histogram beside it."""
    json_path = Path(json_path)
    return [json_path, json_path.with_suffix(".md"), json_path.with_name(json_path.stem + "_hops.png")]


def check_latency_outputs(json_path: Path) -> None:
    """Before minutes of timing: the files beside ``--json`` may replace only an earlier latency run's own files,
    never a user's (``--json README.json`` must not write over README.md)."""
    json_path = check_json_output(json_path, "--json")
    probe_writable_dir(json_path.parent)
    existing = [p for p in latency_outputs(json_path) if p.exists()]
    if not existing:
        return
    try:
        earlier = json.loads(json_path.read_text())
        ours = isinstance(earlier, dict) and {"configs", "peers", "hops"} <= earlier.keys()
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise RtpulseError(f"{existing[0]} exists and is not from an earlier latency run; give --json a new name "
                           f"(the .md table and _hops.png go beside it)")


def write_latency(result: dict, hist: dict[str, np.ndarray], json_path: Path, plot: bool = True) -> list[Path]:
    """JSON at ``json_path``, the markdown table and the histogram PNG beside it."""
    json_path, md, png = latency_outputs(json_path)
    write_text_atomic(json_path, json.dumps(result, indent=2) + "\n")
    write_text_atomic(md, markdown(result))
    written = [json_path, md]
    if plot and hist and have_matplotlib():
        plot_histogram(hist, png)
        written.append(png)
    else:
        discard(png)  # an earlier run's histogram beside this run's JSON would show configurations it did not time
    return written


def have_matplotlib() -> bool:
    """Plots are optional (the ``[bench]`` extra); without matplotlib the JSON and tables are still written."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


if __name__ == "__main__":  # pragma: no cover
    import sys

    from rtpulse.cli_bench import bench_app

    bench_app(["latency", *sys.argv[1:]], prog_name="python -m benchmarks.latency")
