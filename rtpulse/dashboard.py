"""The `rtpulse live` dashboard (rich) and its one-line form for logs (`--no-dashboard`)."""

from __future__ import annotations

import math

from rich.table import Table
from rich.text import Text


def _meter(dbfs: float, peak_dbfs: float | None = None, width: int = 30, floor: float = -60.0) -> Text:
    """A bar of the RMS level ``dbfs`` from ``floor`` dBFS to 0 dBFS, coloured by the peak: green, yellow above −12,
    red above −3 (about to clip). Not by the RMS: a full-scale sine is −3 dBFS RMS, clipped speech far less."""
    frac = 0.0 if not math.isfinite(dbfs) else min(max((dbfs - floor) / -floor, 0.0), 1.0)
    filled = round(frac * width)
    peak = dbfs if peak_dbfs is None else peak_dbfs
    style = "red" if peak > -3 else "yellow" if peak > -12 else "green"
    label = f" {dbfs:6.1f} dBFS" + ("" if peak_dbfs is None else f" (peak {peak_dbfs:6.1f})")
    return Text("█" * filled, style=style) + Text("·" * (width - filled), style="dim") + Text(label)


def num(v: float | None, spec: str) -> str:
    """``v`` formatted, or "—" for a figure not measured yet (no hop timed)."""
    return "—" if v is None else format(v, spec)


def render_dashboard(s: dict) -> Table:
    """``s``: the stats dict of ``run_live`` → a two-column table."""
    t = Table(title=f"rtpulse live · {s['model']}", show_header=False, box=None, padding=(0, 1))
    t.add_column(style="bold")
    t.add_column()
    t.add_row("devices", f"{s['devices']} · {s['rate']} Hz · block {s['blocksize']}")
    t.add_row("input", _meter(s["in_level_dbfs"], s.get("in_peak_dbfs")))
    t.add_row("output", _meter(s["out_level_dbfs"], s.get("out_peak_dbfs")))
    t.add_row("hop compute", f"median {num(s['hop_ms_median'], '.2f')} ms · p99 {num(s['hop_ms_p99'], '.2f')} ms "
              "(budget 16 ms)")
    t.add_row("real-time factor", f"{num(s['rtf'], '.3f')} (median hop / hop length) · CPU {s['cpu_percent']:.0f}%")
    t.add_row(
        "delay",
        f"{s['total_delay_ms']:.0f} ms = engine {s['engine_delay_ms']:.0f} + resampling/buffer "
        f"{s['pipeline_delay_ms'] - s['engine_delay_ms']:.0f} + device {s['device_latency_ms']:.0f}",
    )
    xr = s["input_overflows"] + s["output_underflows"]
    t.add_row(
        "xruns",
        Text(
            f"input overflows {s['input_overflows']} · output underflows {s['output_underflows']}",
            style="red" if xr else "",
        ),
    )
    bad = s["dropped_blocks"] + s["faults"]
    t.add_row(
        "overload",
        Text(
            f"dropped blocks {s['dropped_blocks']} ({s['dropped_samples']} samples played dry) · "
            f"faults {s['faults']} · late restarts {s['late_restarts']}",
            style="yellow" if bad else "",
        ),
    )
    if s.get("last_error"):
        t.add_row("last fault", Text(s["last_error"], style="red"))
    t.add_row("time", f"{s['seconds']:.1f} s · Ctrl-C stops")
    return t


def status_line(s: dict) -> str:
    """The dashboard in one line."""
    return (
        f"live {s['seconds']:.0f}s in {s['in_level_dbfs']:.0f} dBFS out {s['out_level_dbfs']:.0f} dBFS | "
        f"hop {num(s['hop_ms_median'], '.2f')}/{num(s['hop_ms_p99'], '.2f')} ms (median/p99) RTF {num(s['rtf'], '.3f')} "
        f"CPU {s['cpu_percent']:.0f}% | xruns in {s['input_overflows']} out {s['output_underflows']} | "
        f"dropped {s['dropped_blocks']} faults {s['faults']} | delay {s['total_delay_ms']:.0f} ms"
    )
