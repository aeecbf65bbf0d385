"""The streaming engine and offline enhance under hostile input: any chunking, NaN/±Inf, 1e30, denormals,
silence, DC, full-scale squares. Output finite, bounded by OUTPUT_GAIN_BOUND · peak input, back to normal
after a burst of garbage, and still equal to the offline path."""

from __future__ import annotations

import textwrap
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtpulse.model import PulseCNN
from rtpulse.stft import HOP, istft, stft, window
from rtpulse.stream import MAX_ABS, OUTPUT_GAIN_BOUND, StreamingDenoiser, enhance, sanitize

HYPO = settings(deadline=None, max_examples=120, suppress_health_check=[HealthCheck.too_slow])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(lookahead: int = 0, compress: str = "linear") -> PulseCNN:
    """blocks2 with logits spread around 0 (conftest.random_model): binary masks keep some bins and drop others."""
    return random_model("blocks2", lookahead, compress=compress)


MODELS = {(la, c): _model(la, c) for la in (0, 2) for c in ("linear", "power")}


def _stream(engine: StreamingDenoiser, x: np.ndarray, cuts: list[int]) -> np.ndarray:
    """Feed ``x`` in pieces cut at ``cuts`` (sorted), then flush: returns len(x) + delay samples."""
    bounds = [0, *cuts, x.size]
    parts = [engine.process(x[a:b]) for a, b in pairwise(bounds)]
    parts.append(engine.flush())
    return np.concatenate(parts)


SPECIALS = [np.nan, np.inf, -np.inf, 1e30, -1e30, 1e-40, -1e-44, 0.0, 1.0, -1.0]

signal_values = st.lists(
    st.one_of(
        st.sampled_from(SPECIALS),
        st.floats(-1.0, 1.0, width=32),
        st.floats(allow_nan=True, allow_infinity=True, width=32),
    ),
    min_size=0,
    max_size=3000,
)


@HYPO
@given(values=signal_values, cut_seed=st.integers(0, 2**31 - 1), key=st.sampled_from(sorted(MODELS)))
def test_any_values_any_chunking_give_finite_bounded_output(values, cut_seed, key):
    x = np.array(values, dtype=np.float32)
    rng = np.random.default_rng(cut_seed)
    cuts = sorted(rng.integers(0, x.size + 1, size=rng.integers(0, 12)).tolist())
    engine = StreamingDenoiser(MODELS[key], mask="binary")
    y = _stream(engine, x, cuts)
    assert y.shape == (x.size + engine.delay,)
    assert np.all(np.isfinite(y))
    peak_in = float(np.abs(sanitize(x)).max()) if x.size else 0.0
    assert float(np.abs(y).max(initial=0.0)) <= OUTPUT_GAIN_BOUND * peak_in + 1e-6


@HYPO
@given(
    kind=st.sampled_from(["silence", "dc", "square", "denormal", "huge", "alternating"]),
    level=st.sampled_from([1.0, -1.0, 0.5, 1e-38, 1e30]),
    n=st.integers(1, 4000),
    chunk=st.integers(1, 2000),
    mask=st.sampled_from(["binary", "soft", "posterior"]),
)
def test_pathological_signals_stream_equals_offline_and_stay_bounded(kind, level, n, chunk, mask):
    t = np.arange(n)
    with np.errstate(over="ignore"):  # 1e30 · 1e30 → inf on purpose
        x = {
            "silence": np.zeros(n),
            "dc": np.full(n, level),
            "square": level * np.sign(np.sin(2 * np.pi * 440 * t / 16000) + 1e-9),
            "denormal": np.full(n, 1e-41) * np.sign(np.sin(t)),
            "huge": np.full(n, level * 1e30),
            "alternating": level * (-1.0) ** t,
        }[kind].astype(np.float32)
    model = MODELS[(0, "power")]
    engine = StreamingDenoiser(model, mask=mask)
    y = _stream(engine, x, list(range(chunk, n, chunk)))
    assert np.all(np.isfinite(y))
    aligned = y[engine.delay :]
    offline = enhance(model, torch.from_numpy(x), mask=mask).numpy()
    assert np.all(np.isfinite(offline))
    np.testing.assert_allclose(aligned, offline, atol=1e-5 * max(1.0, float(np.abs(offline).max())))
    peak_in = float(np.abs(sanitize(x)).max())
    assert float(np.abs(y).max()) <= OUTPUT_GAIN_BOUND * peak_in + 1e-6
    if kind == "silence" or kind == "denormal":
        assert not np.any(y)  # silence (and denormal dust, flushed to 0) stays exactly silent


def test_sanitize_replaces_nonfinite_clips_huge_and_flushes_denormals():
    x = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 1e-40, 0.25, -2.0], dtype=np.float32)
    y = sanitize(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [0, 0, 0, MAX_ABS, -MAX_ABS, 0, 0.25, -2.0])
    assert np.isnan(x[0])  # the caller's array is untouched


def test_sanitize_clips_float64_beyond_float32s_range_instead_of_silencing_it():
    """A float64 1e39 is huge, not Inf: clipped to ±MAX_ABS like a float32 1e30 (cast to float32 first it became Inf,
    and so 0)."""
    x = np.array([1e39, -1e300, np.nan, np.inf, 0.25], dtype=np.float64)
    y = sanitize(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [MAX_ABS, -MAX_ABS, 0, 0, 0.25])
    t = sanitize(torch.from_numpy(x))
    assert t.dtype == torch.float32
    np.testing.assert_array_equal(t.numpy(), [MAX_ABS, -MAX_ABS, 0, 0, 0.25])


@pytest.mark.parametrize("lookahead", [0, 2])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30])
def test_output_recovers_within_receptive_field_plus_one_frame_after_burst(lookahead, bad):
    rng = np.random.default_rng(1)
    x = (0.3 * rng.standard_normal(16000)).astype(np.float32)
    burst_start, burst_end = 3000, 3700
    dirty = x.copy()
    dirty[burst_start:burst_end] = bad
    model = MODELS[(lookahead, "linear")]
    engine = StreamingDenoiser(model)
    clean_out = _stream(engine, x, list(range(333, x.size, 333)))
    dirty_out = _stream(engine, dirty, list(range(333, x.size, 333)))
    assert np.all(np.isfinite(dirty_out))
    # the model's own claim: one output frame depends on past_frames earlier frames (2 per causal 3×3 layer, 1 per
    # lookahead one), plus its own 1024 samples; sample equality below fails if the claim is short
    n3 = sum(1 for _, _, k in model.config.layers if k == 3)
    assert model.past_frames == 2 * n3 - lookahead <= model.receptive_field[1] - 1  # within "receptive field + frame"
    recovered = burst_end + 1024 + HOP * model.past_frames
    d = engine.delay
    np.testing.assert_array_equal(dirty_out[recovered + d :], clean_out[recovered + d :])
    untouched = burst_start - 1024 - HOP * lookahead  # frames (and lookahead) reach this far back
    np.testing.assert_array_equal(dirty_out[: untouched + d], clean_out[: untouched + d])
    assert not np.array_equal(dirty_out[burst_start + d : burst_end + d], clean_out[burst_start + d : burst_end + d])


def test_gain_bound_is_tight_enough_to_mean_something_and_holds_for_adversarial_masks():
    """OUTPUT_GAIN_BOUND = ‖w‖₂ · max Σ w / Σ w²; every mask in [0, 1] (also sign-matched ones) respects it."""
    w = window(dtype=torch.float64)
    sums = w.reshape(4, HOP)
    bound = float(w.norm() * sums.sum(0).max() / (sums**2).sum(0)[0])
    assert abs(bound - OUTPUT_GAIN_BOUND) < 0.01
    rng = np.random.default_rng(2)
    x = torch.from_numpy(np.sign(rng.standard_normal(8192)).astype(np.float32))  # full-scale random square
    spec = stft(x, tail=2048)
    worst = 0.0
    for target in range(3000, 3010):
        # keep exactly the bins whose phase pushes sample `target` up: the loudest a [0, 1] mask can make it
        frame_idx = torch.arange(spec.shape[-1])
        phase = torch.exp(2j * torch.pi * torch.arange(513)[:, None] * (target + 768 - HOP * frame_idx) / 1024)
        gain = ((spec * phase).real > 0).float()
        worst = max(worst, float(istft(spec * gain, x.numel()).abs().max()))
    assert 1.0 < worst <= bound


def test_reset_and_flush_after_garbage_give_clean_engine_back():
    model = MODELS[(0, "linear")]
    engine = StreamingDenoiser(model)
    engine.process(np.full(5000, np.nan, np.float32))
    engine.reset()
    x = np.random.default_rng(3).standard_normal(4000).astype(np.float32)
    fresh = StreamingDenoiser(model)
    np.testing.assert_array_equal(engine.process(x), fresh.process(x))


def test_short_soak_keeps_memory_flat_and_delay_exact(tmp_path):
    """benchmarks/soak.py for a minute of audio (the benchmark runs an hour): same checks, smaller."""
    from benchmarks.soak import run_soak, write_results

    result = run_soak(seconds=60, impulses=5, samples=10)
    assert result["delay_constant"], result["impulses"]
    assert [i["measured_delay"] for i in result["impulses"]] == [result["declared_delay"]] * 5
    assert result["max_abs_diff"] <= 1e-5 and result["reference_peak"] > 0.01
    assert result["nonfinite_outputs"] == 0
    # the engine holds a fixed amount of state: Python-side allocations do not grow with audio played
    assert result["traced_mb_end"] - result["traced_mb_start"] < 1.0
    assert result["memory_flat"], result["memory"]
    assert 0 < result["engine_seconds"] < result["wall_seconds"]  # the rtf times the engine, not the test signal
    assert result["real_time_factor"] == result["engine_seconds"] / 60
    _, md = write_results(result, tmp_path)
    assert "delay declared 1024" in md.read_text() and "flat: True" in md.read_text()
    _, md = write_results(dict(result, audio_seconds=7.3), tmp_path)
    assert "Command: `python -m benchmarks.soak --seconds 7.3`" in md.read_text()  # a command that runs again


def test_a_soak_sees_an_engine_that_keeps_a_tensor_per_hop():
    """A leak in torch's allocator is invisible to tracemalloc: the RSS of the second half must tell it. In a process
    of its own, as the soak runs: in this one, memory an earlier test freed (and the trainer's malloc settings keep)
    would take the leak without RSS growing."""
    import json
    import subprocess
    import sys

    script = textwrap.dedent("""
        import json, torch
        from benchmarks.soak import run_soak
        from rtpulse.stream import StreamingDenoiser
        kept, hop = [], StreamingDenoiser._hop
        def leaky(self, *args, **kwargs):
            kept.append(torch.zeros(4096))  # 16 KiB a hop: 60 MB a minute
            return hop(self, *args, **kwargs)
        StreamingDenoiser._hop = leaky
        r = run_soak(seconds=60, impulses=5, samples=10)
        print(json.dumps({k: r[k] for k in ("memory_flat", "rss_mb_growth_second_half")}))
    """)
    run = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert not result["memory_flat"] and result["rss_mb_growth_second_half"] > 20
