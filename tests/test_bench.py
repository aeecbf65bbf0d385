"""Benchmarks: delay locator, latency JSON keys, peer adapters' rate/length/alignment, the Wiener baseline."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import pytest
import torch

from benchmarks.align import impulse_delay, locate_delay
from benchmarks.baselines import spectral_subtraction, wiener
from benchmarks.peers import PEER_CLASSES, PEER_NAMES, Peer
from rtpulse.metrics import si_snr_np
from rtpulse.model import ModelConfig, PulseCNN, save_model

SR = 16_000


@pytest.fixture(autouse=True)
def one_thread():
    # tiny ops on a shared 2-core machine: more threads only add contention
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("delay", [0, 1, 255, 1024, 1791])
def test_locator_finds_planted_delay_exactly(delay):
    rng = np.random.default_rng(delay)
    x = rng.standard_normal(4000).astype(np.float32)
    y = np.concatenate((np.zeros(delay), 0.3 * x, np.zeros(50))) + 0.05 * rng.standard_normal(delay + 4050)
    assert locate_delay(x, y, max_lag=2000) == delay

    # an impulse through a pure delay line (with a smaller echo) lands at the planted delay
    def line(s):
        return np.concatenate((np.zeros(delay), s))[: s.size] + 0.4 * np.concatenate((np.zeros(delay + 7), s))[: s.size]

    assert impulse_delay(line, 3000 + delay + 100, 3000) == delay


def test_engine_delay_measured_equals_expected():
    from benchmarks.latency import measure_delay

    torch.manual_seed(0)
    for look in (0, 2):
        model = PulseCNN(ModelConfig(preset="blocks2", lookahead=look)).eval()
        assert measure_delay(model) == 1024 + 256 * look


def test_latency_json_has_documented_keys(tmp_path):
    from benchmarks.latency import LatencyOptions, run_latency, write_latency

    torch.manual_seed(0)
    path = tmp_path / "tiny.safetensors"
    save_model(PulseCNN(ModelConfig(preset="blocks2", lookahead=1)).eval(), path)
    opts = LatencyOptions(hops=12, warmup=2, models=[path], presets=False, peers=False, profile=False, timing_repeats=5)
    result, hist = run_latency(opts)
    written = write_latency(result, hist, tmp_path / "lat.json", plot=False)
    data = json.loads((tmp_path / "lat.json").read_text())
    assert {p.name for p in written} == {"lat.json", "lat.md"}
    assert {"configs", "peers"} <= set(data)
    row = next(c for c in data["configs"] if c["name"] == "tiny")
    keys = {
        "name",
        "preset",
        "lookahead",
        "delay_samples_measured",
        "delay_samples_expected",
        "hop_ms_p50",
        "hop_ms_p99",
        "hop_ms_max",
        "rtf",
        "recompute_ratio",
    }
    assert keys <= set(row)
    assert row["delay_samples_expected"] == 1024 + 256 and row["delay_samples_measured"] == 1280
    times = hist["tiny"]  # the per-hop times the row summarises, in ms: the row must be computed from them
    assert times.shape == (12,) and (times > 0).all()
    assert row["hop_ms_p50"] == pytest.approx(np.median(times), abs=1e-4)
    assert row["hop_ms_max"] == pytest.approx(times.max(), abs=1e-4)
    assert row["rtf"] == pytest.approx(times.mean() / 16.0, abs=1e-4)  # a hop is 256 samples = 16 ms
    assert row["recompute_ratio"] > 0
    assert "| tiny | blocks2 | 1 |" in (tmp_path / "lat.md").read_text()


class DelayLine48k(Peer):
    """A fake peer: identity at 48 kHz in 480-sample frames with a 960-sample internal delay."""

    def __init__(self) -> None:
        super().__init__("delay line", "-", rate=48_000, frame=480, delay_native=960)

    def _new(self):
        return {"buf": np.zeros(960, np.float32)}

    def _frame(self, state, frame):
        buf = np.concatenate((state["buf"], frame))
        state["buf"] = buf[frame.size :]
        return buf[: frame.size]


def _speechlike(seconds: float = 1.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    s = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 20)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2
    return (0.2 * s / np.abs(s).max()).astype(np.float32)


def test_adapter_resamples_and_removes_delay():
    x = _speechlike()
    y = DelayLine48k().enhance(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    # 16k → 48k → 16k round trip of a band-limited signal, delay removed: the same samples (edges aside)
    err = np.abs(y[200:-200] - x[200:-200]).max()
    assert err < 1e-2 * np.abs(x).max()


@pytest.mark.parametrize("cls", PEER_CLASSES, ids=lambda c: PEER_NAMES[c.__name__])
def test_peer_round_trip_rate_length_alignment(cls):
    name = PEER_NAMES[cls.__name__]
    try:
        peer = cls()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"{name} not available: {type(e).__name__}: {e}")
    rng = np.random.default_rng(0)
    x = _speechlike() + 0.003 * rng.standard_normal(int(1.5 * SR)).astype(np.float32)
    y = peer.enhance(x)
    assert y.dtype == np.float32 and y.shape == x.shape and np.isfinite(y).all()
    assert locate_delay(x, y, max_lag=800) == 0  # aligned: the peer's delay was removed
    if peer.streaming:
        native = peer.raw(np.zeros(peer.rate // 10, np.float32))
        assert native.size % peer.frame == 0 and native.size >= peer.rate // 10 + peer.delay_native


@pytest.mark.parametrize("method", [spectral_subtraction, wiener])
def test_baselines_improve_si_snr_of_gated_tone_in_white_noise(method):
    # the tone pauses half the time: the noise estimate comes from the quiet frames, as with speech pauses
    rng = np.random.default_rng(1)
    t = np.arange(2 * SR) / SR
    tone = (0.3 * np.sin(2 * np.pi * 500 * t) * (t % 1 < 0.5)).astype(np.float32)
    noisy = tone + 0.1 * rng.standard_normal(tone.size).astype(np.float32)
    out = method(noisy)
    assert out.shape == noisy.shape
    assert si_snr_np(out, tone) - si_snr_np(noisy, tone) > 6.0  # 3.5 dB in; ~11.5 (SS) / ~19.6 (Wiener) out


@pytest.mark.skipif(importlib.util.find_spec("typer") is None, reason="typer not installed")
def test_bench_cli_latency_writes_json(tmp_path):
    from typer.testing import CliRunner

    from rtpulse.cli import app

    path = tmp_path / "m.safetensors"
    save_model(PulseCNN(ModelConfig(preset="blocks2")).eval(), path)
    out = tmp_path / "l.json"
    args = ["bench", "latency", "--model", str(path), "--hops", "10", "--warmup", "1", "--no-presets", "--no-peers",
            "--no-plot", "--no-profile", "--timing-repeats", "5"]
    res = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["configs"][-1]["delay_samples_measured"] == 1024
    assert (tmp_path / "l.md").read_text().startswith("Latency")
    res = CliRunner().invoke(app, [*args, "--json", str(out)])  # a rerun replaces its own earlier results
    assert res.exit_code == 0, res.output
    # a user's file beside --json (README.md for --json README.json) is never replaced
    (tmp_path / "README.md").write_text("mine")
    res = CliRunner().invoke(app, [*args, "--json", str(tmp_path / "README.json")])
    assert res.exit_code == 1 and "README.md exists and is not from an earlier latency run" in res.output
    assert (tmp_path / "README.md").read_text() == "mine" and not (tmp_path / "README.json").exists()
    (tmp_path / "notes.json").write_text("{}")  # nor a JSON file that is not a latency result
    res = CliRunner().invoke(app, [*args, "--json", str(tmp_path / "notes.json")])
    assert res.exit_code == 1 and (tmp_path / "notes.json").read_text() == "{}"


def _tiny_data(root):
    from rtpulse.audio import write_audio

    rng = np.random.default_rng(3)
    (root / "speech" / "dev").mkdir(parents=True)
    (root / "noise" / "dev").mkdir(parents=True)
    for name, seconds in (("a", 5.0), ("b", 4.5), ("c", 6.0)):
        write_audio(root / "speech" / "dev" / f"{name}.wav", _speechlike(seconds), SR)
    write_audio(root / "speech" / "dev" / "short.wav", _speechlike(1.0), SR)  # < 4 s: never used
    write_audio(root / "noise" / "dev" / "n.wav", (0.1 * rng.standard_normal(3 * SR)).astype(np.float32), SR)


def test_bench_outputs_that_cannot_be_written_are_refused_before_the_work(tmp_path):
    """A .md --json would be overwritten by its own table; a folder is not a file; a file is not a folder."""
    from typer.testing import CliRunner

    from rtpulse.cli import app

    (tmp_path / "taken").write_text("mine")
    (tmp_path / "d.json").mkdir()
    for args, words in (
        (["latency", "--json", str(tmp_path / "l.md")], "give a file name ending in .json"),
        (["latency", "--json", str(tmp_path / "taken" / "l.json")], "is a file, not a folder"),
        (["quality", "--out", str(tmp_path / "taken" / "sub")], "is a file, not a folder"),
        (["latency", "--json", str(tmp_path / "d.json")], "is a directory"),
        (["quality", "--out", str(tmp_path / "taken")], "is a file; give a folder"),
        (["training", "--data", str(tmp_path), "--out", str(tmp_path / "taken")], "is a file; give a folder"),
    ):
        res = CliRunner().invoke(app, ["bench", *args])
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 1 and len(lines) == 1 and words in lines[0], (args, res.output)
    assert (tmp_path / "taken").read_text() == "mine" and not (tmp_path / "l.md").exists()


def test_generated_mixtures_have_their_drawn_snr(tmp_path):
    from benchmarks.quality import generated_set

    _tiny_data(tmp_path)
    items = generated_set(tmp_path, count=3, seconds=4.0, seed=0)
    assert len(items) == 3 and all(it.noisy.size == 4 * SR for it in items)
    for it in items:
        noise = it.noisy - it.clean
        snr = 10 * np.log10((it.clean.astype(np.float64) ** 2).sum() / (noise.astype(np.float64) ** 2).sum())
        assert -5.0 <= it.snr_db <= 10.0
        assert abs(snr - it.snr_db) < 0.05
    again = generated_set(tmp_path, count=3, seconds=4.0, seed=0)
    assert all(np.array_equal(a.noisy, b.noisy) for a, b in zip(items, again))  # fixed seed, same set


def test_quality_run_scores_every_system(tmp_path):
    from conftest import random_model

    from benchmarks.quality import QualityOptions, markdown, run_quality

    _tiny_data(tmp_path)
    path = tmp_path / "m.safetensors"
    # mixed masks: a default-init model's soft gain is ~0.47 everywhere, which SI-SNR cannot tell from a pass-through
    save_model(random_model("blocks2", 1), path)
    opts = QualityOptions(
        data=tmp_path,
        models=[path],
        labels=["tiny"],
        count=2,
        seconds=1.5,
        peers=False,
        dnsmos=False,
        min_speech_seconds=1.5,
    )
    result, _ = run_quality(opts)
    systems = result["systems"]
    assert {"Noisy input", "rtpulse tiny offline", "rtpulse tiny streaming", "Wiener (DD)"} <= set(systems)
    noisy = systems["Noisy input"]["metrics"]["si_snri"]
    assert noisy["mean"] == pytest.approx(0.0, abs=1e-9) and noisy["n"] == 2
    off = [r["si_snr"] for r in systems["rtpulse tiny offline"]["files"]]
    stream = [r["si_snr"] for r in systems["rtpulse tiny streaming"]["files"]]
    assert off == pytest.approx(stream, abs=1e-3)  # the streaming engine gives the offline samples
    gains = [r["si_snri"] for r in systems["rtpulse tiny offline"]["files"]]
    assert min(abs(v) for v in gains) > 0.1  # the model changes the score: a pass-through (SI-SNRi 0) cannot match
    assert systems["Wiener (DD)"]["residual_lag_samples_median"] == 0
    assert "| Wiener (DD) |" in markdown(result)
    assert [r["noise"] for r in systems["Noisy input"]["files"]] == ["dev/n", "dev/n"]  # the one noise file
    tiny = np.mean([r["si_snri"] for r in systems["rtpulse tiny offline"]["files"]])
    lines = markdown(result).splitlines()
    header = next(line for line in lines if line.startswith("| noise | files |")).strip("|").split(" | ")
    row = next(line for line in lines if line.startswith("| dev/n |")).strip("|").split(" | ")
    cells = dict(zip((h.strip() for h in header), (c.strip() for c in row)))
    assert cells["files"] == "2" and cells["rtpulse tiny offline"] == f"{tiny:.2f}"


def test_by_noise_table_averages_each_systems_files_per_noise():
    from benchmarks.quality import by_noise_lines

    def files(values):
        return [{"file": f"f{i}", "noise": n, "si_snri": v} for i, (n, v) in enumerate(zip("abab", values))]

    systems = {
        "Noisy input": {"kind": "input", "files": files([0, 0, 0, 0])},
        "ours": {"kind": "rtpulse", "files": files([1.0, 5.0, 3.0, 7.0])},
        "RNNoise": {"kind": "peer", "files": files([2.0, 2.0, 4.0, 0.0])},
        "Wiener (DD)": {"kind": "baseline", "files": files([9.0, 9.0, 9.0, 9.0])},
    }
    lines = by_noise_lines(systems)
    assert "| noise | files | ours | RNNoise |" in lines  # input and baselines left out
    assert "| a | 2 | 2.00 | 3.00 |" in lines and "| b | 2 | 6.00 | 1.00 |" in lines
    systems["RNNoise"]["files"].reverse()  # rows are matched by file name, not by position
    assert by_noise_lines(systems) == lines
    assert by_noise_lines({"ours": {"kind": "rtpulse", "files": [{"file": "x", "si_snri": 1.0}]}}) == []


def test_noise_floor_of_a_known_signal_and_the_test_set_skips_noisy_references(tmp_path):
    from benchmarks.quality import generated_set
    from rtpulse.audio import write_audio
    from rtpulse.errors import RtpulseError
    from trainer.data import noise_floor_db

    # 60 frames of a full-scale tone (power 1/2 per 16 ms frame: whole cycles) and 140 of a tone with power 1e-4:
    # p95 is loud, p10 quiet, floor = 10·log10(1e-4 / 0.5) = −36.99 dB
    rng = np.random.default_rng(1)
    tone = np.sin(2 * np.pi * 500 * np.arange(256 * 200) / SR)
    x = tone * np.where(np.arange(tone.size) < 256 * 60, 1.0, np.sqrt(2e-4))
    assert noise_floor_db(x) == pytest.approx(10 * np.log10(1e-4 / 0.5), abs=1e-6)
    assert noise_floor_db(np.zeros(100)) == 0.0  # shorter than a frame: no quiet frames to speak of

    _tiny_data(tmp_path)
    clean_names = {p.stem for p in (tmp_path / "speech" / "dev").iterdir() if p.stem != "short"}
    # one more reference with a steady hiss 12 dB under the voice: skipped by default, used with 0
    hissy = _speechlike(5.0) + 0.05 * rng.standard_normal(5 * SR).astype(np.float32)
    write_audio(tmp_path / "speech" / "dev" / "hissy.wav", hissy, SR)
    assert noise_floor_db(hissy) > -25 > max(noise_floor_db(_speechlike(s)) for s in (4.0, 5.0))
    names = {it.name.split("-", 2)[2] for it in generated_set(tmp_path, count=len(clean_names), seconds=4.0, seed=0)}
    assert names == clean_names
    everything = generated_set(tmp_path, count=len(clean_names) + 1, seconds=4.0, seed=0, reference_floor_db=0.0)
    assert "hissy" in {it.name.split("-", 2)[2] for it in everything}
    with pytest.raises(RtpulseError, match="noise floor"):
        generated_set(tmp_path, count=len(clean_names) + 1, seconds=4.0, seed=0)


def test_reference_floor_groups_each_system_by_its_references_floor(tmp_path):
    from benchmarks.quality import generated_set
    from benchmarks.reference_floor import by_floor, floors_by_file, plot
    from rtpulse.errors import RtpulseError
    from trainer.data import noise_floor_db

    result = {"systems": {
        "A": {"files": [{"file": "x", "si_snri": 6.0}, {"file": "y", "si_snri": 4.0}, {"file": "z", "si_snri": -10.0}]},
        "B": {"files": [{"file": "x", "si_snri": 3.0}, {"file": "z", "si_snri": 2.0}]},
    }}
    floors = {"x": -40.0, "y": -25.0, "z": -16.0}  # -25 itself counts as quiet
    table = by_floor(result, floors, -25.0)
    assert table["A"] == {"quiet": 5.0, "background": -10.0, "n_quiet": 2, "n_background": 1}
    assert table["B"]["quiet"] == 3.0 and table["B"]["background"] == 2.0
    if importlib.util.find_spec("matplotlib"):
        plot(result, floors, ["A", "B"], tmp_path / "f.png", -25.0)
        assert (tmp_path / "f.png").stat().st_size > 1000

    # a run's own test set is rebuilt from its JSON, files checked against what it scored
    _tiny_data(tmp_path / "data")
    items = generated_set(tmp_path / "data", 3, 4.0, 0, 4.0, reference_floor_db=-25.0)
    run = {"test_set": {"count": 3, "seconds_max": 4.0, "seed": 0, "speech_min_seconds": 4.0, "reference_floor_db": -25.0},
           "systems": {"A": {"files": [{"file": it.name, "si_snri": 1.0} for it in items]}}}
    assert floors_by_file(run, tmp_path / "data") == {it.name: noise_floor_db(it.clean) for it in items}
    run["systems"]["A"]["files"].append({"file": "mix-009-elsewhere", "si_snri": 0.0})
    with pytest.raises(RtpulseError, match="not in the regenerated set"):
        floors_by_file(run, tmp_path / "data")
    with pytest.raises(RtpulseError, match="not generated: there is no set to regenerate"):  # a --noisy/--clean run
        floors_by_file({"test_set": {"noisy": "n", "clean": "c"}, "systems": {}}, tmp_path / "data")
    with pytest.raises(RtpulseError, match="not a quality.json"):
        floors_by_file([1, 2], tmp_path / "data")


@pytest.mark.parametrize("out", ["folder", "under_a_file"])
def test_reference_floor_refuses_an_unwritable_plot_before_decoding(tmp_path, out):
    import subprocess
    import sys

    (tmp_path / "q.json").write_text(json.dumps({"test_set": {"count": 1}, "systems": {}}))
    (tmp_path / "afile").write_text("x")
    path = {"folder": tmp_path, "under_a_file": tmp_path / "afile" / "f.png"}[out]
    run = subprocess.run([sys.executable, "-m", "benchmarks.reference_floor", str(tmp_path / "q.json"), "--data",
                          str(tmp_path / "nodata"), "--out", str(path)], check=False, capture_output=True, text=True)
    assert run.returncode == 1 and "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert {"folder": "is a directory", "under_a_file": "afile"}[out] in run.stderr
    assert "nodata" not in run.stderr  # refused before the data were looked at


def test_a_model_whose_own_mask_is_the_posterior_is_also_scored_with_it(tmp_path):
    from benchmarks.quality import QualityOptions, rtpulse_systems
    from rtpulse.stream import enhance

    path = tmp_path / "post.safetensors"
    model = PulseCNN(ModelConfig(preset="blocks2", mask="posterior")).eval()
    save_model(model, path)
    systems = {s.name: s for s in rtpulse_systems(QualityOptions(models=[path], labels=["p"], streaming=False))[0]}
    assert {"rtpulse p offline", "rtpulse p offline binary", "rtpulse p offline posterior"} <= set(systems)
    x = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    want = enhance(model, torch.from_numpy(x), "posterior").numpy()
    np.testing.assert_allclose(systems["rtpulse p offline posterior"].run(x), want, atol=1e-6)
    assert np.max(np.abs(systems["rtpulse p offline"].run(x) - want)) > 1e-4  # soft is a different mask


def _bench_quality(tmp_path, *args):
    from typer.testing import CliRunner

    from rtpulse.cli import app

    return CliRunner().invoke(app, ["bench", "quality", "--out", str(tmp_path / "q"), "--no-peers", "--no-dnsmos",
                                    "--no-streaming", *args])


def _one_line_error(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


@pytest.mark.parametrize(("samples", "words"), [
    (np.zeros(0, np.float32), "holds 0 samples at 16 kHz, under one STFT frame"),
    (np.r_[np.zeros(1000), np.nan, np.zeros(999)].astype(np.float32), "holds 1 non-finite sample(s)"),
])
def test_bench_quality_refuses_empty_or_non_finite_input(tmp_path, samples, words):
    import soundfile as sf

    sf.write(tmp_path / "n.wav", samples, SR, subtype="FLOAT")
    sf.write(tmp_path / "c.wav", _speechlike(0.5), SR, subtype="FLOAT")
    res = _bench_quality(tmp_path, "--noisy", str(tmp_path / "n.wav"), "--clean", str(tmp_path / "c.wav"))
    assert words in _one_line_error(res)
    assert not (tmp_path / "q").exists()


def test_too_few_speech_files_says_which_option_helps(tmp_path):
    from benchmarks.quality import generated_set

    _tiny_data(tmp_path)  # 4.5, 5 and 6 s files and a 1 s one, all quiet between words
    res = _bench_quality(tmp_path, "--data", str(tmp_path), "--count", "4", "--seconds", "1")
    line = _one_line_error(res)
    assert "only 3 of the 4 speech files" in line and "(4 asked)" in line
    assert "1 shorter than 4 s (lower --min-speech-seconds), 0 with a noise floor above -25 dB" in line
    res = _bench_quality(tmp_path, "--data", str(tmp_path), "--count", "4", "--min-speech-seconds", "5.5")
    assert "only 1 of the 4 speech files" in _one_line_error(res)  # the option reaches the test set: only c (6 s)
    names = {it.name.split("-", 2)[2] for it in generated_set(tmp_path, 4, 1.0, 0, min_seconds=1.0)}
    assert names == {"a", "b", "c", "short"}
    assert "must be a finite number" in _one_line_error(
        _bench_quality(tmp_path, "--data", str(tmp_path), "--min-speech-seconds", "nan"))
    for level in ("nan", "5", "-200"):  # NaN once made a table of NaN, exit 0
        assert "--level-dbfs must be −80…0 dB" in _one_line_error(
            _bench_quality(tmp_path, "--data", str(tmp_path), "--level-dbfs", level))


@pytest.mark.parametrize("noise", [np.zeros(0, np.float32), np.zeros(SR, np.float32)], ids=["empty", "silent"])
def test_a_noise_recording_without_sound_and_a_negative_seed_are_one_line_errors(tmp_path, noise):
    import soundfile as sf

    _tiny_data(tmp_path)
    sf.write(tmp_path / "noise" / "dev" / "n.wav", noise, SR, subtype="FLOAT")  # the only noise: every mix draws it
    line = _one_line_error(_bench_quality(tmp_path, "--data", str(tmp_path), "--count", "1", "--seconds", "1"))
    assert "n.wav holds no sound (empty or silent); remove it from the noise folder" in line
    line = _one_line_error(_bench_quality(tmp_path, "--data", str(tmp_path), "--seed", "-1"))
    assert "--seed must be 0…2^32−1, got -1" in line


def test_a_mean_over_fewer_files_than_the_set_says_how_many():
    from benchmarks.quality import _fmt, mean_ci

    part = mean_ci([1.0, None, 3.0])  # PESQ refused one file
    assert part == {"mean": 2.0, "ci95": pytest.approx(12.706 * 2**0.5 / 2**0.5, abs=1e-3), "n": 2}
    assert _fmt(part, 2, 3) == "2.00 ± 12.71 (n 2 of 3)" and _fmt(mean_ci([1.0, 2.0, 3.0]), 1, 3) == "2.0 ± 2.5"


def test_labels_must_match_the_models(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(PulseCNN(ModelConfig(preset="blocks2")).eval(), path)
    for args, words in (
        (["-m", str(path), "--label", "a", "--label", "b"], "2 --label for 1 --model"),
        (["--label", "a"], "1 --label for 0 --model"),
        (["-m", str(path), "-m", str(path)], "two models would both be named 'rtpulse m'"),  # results kept by name
        (["-m", str(path), "--label", "(shipped)"], "two models would both be named 'rtpulse (shipped)'"),
    ):
        res = _bench_quality(tmp_path, "--data", str(tmp_path / "none"), *args)  # refused before the data is read
        assert words in _one_line_error(res)


def test_quality_help_states_the_default_data_root():
    from pathlib import Path

    import typer

    from benchmarks.quality import DEFAULT_DATA
    from rtpulse.cli_bench import bench_app

    commands = typer.main.get_command(bench_app).commands
    help_of = {c: {p.name: p.help for p in commands[c].params} for c in ("quality", "training")}
    repository = Path(__file__).resolve().parent.parent
    assert DEFAULT_DATA == repository.parent / "shared" / "data"  # what the help says:
    assert "Default: shared/data in the folder that holds the repository (../shared/data" in help_of["quality"]["data"]
    assert help_of["quality"]["min_speech_seconds"] == help_of["training"]["min_speech_seconds"]


def test_real_recordings_need_dnsmos(tmp_path, monkeypatch):
    from benchmarks import quality
    from benchmarks.quality import QualityOptions, markdown, run_quality
    from rtpulse.audio import write_audio
    from rtpulse.errors import RtpulseError

    (tmp_path / "real").mkdir()
    write_audio(tmp_path / "real" / "r.wav", _speechlike(0.5), SR)
    assert "--real is scored with DNSMOS only" in _one_line_error(_bench_quality(tmp_path, "--real", str(tmp_path / "real")))

    # paired folders with a noisy file that has no partner and a pair 40 samples apart
    for d in ("noisy", "clean"):
        (tmp_path / d).mkdir()
    x = _speechlike(0.5)
    write_audio(tmp_path / "clean" / "p.wav", x, SR)
    write_audio(tmp_path / "noisy" / "p.wav", np.r_[x, np.zeros(40, np.float32)], SR)
    write_audio(tmp_path / "noisy" / "alone.wav", x, SR)

    def no_dnsmos():
        raise RuntimeError("speechmos is not installed")

    monkeypatch.setattr(quality, "Dnsmos", no_dnsmos)
    monkeypatch.setattr(quality, "REAL_LIMIT", 1)
    write_audio(tmp_path / "real" / "s.wav", _speechlike(0.5), SR)  # one more than the limit: said, not silent
    opts = QualityOptions(noisy=tmp_path / "noisy", clean=tmp_path / "clean", real=tmp_path / "real", peers=False,
                          streaming=False, baselines=False)
    result, _ = run_quality(opts)
    assert "real" not in result and result["test_set"]["files"] == 1
    assert result["systems"]["Noisy input"]["files"][0]["si_snri"] == 0.0
    assert result["warnings"] == [
        "--real: scored the first 1 of 2 files (in name order)",
        f"1 noisy file(s) without a clean partner in {tmp_path / 'clean'} skipped: alone",
        "1 pair(s) differ in length (by up to 2.5 ms), scored over the shorter: p",
        f"--real {tmp_path / 'real'} not scored: DNSMOS is unavailable (RuntimeError: speechmos is not installed)",
    ]
    assert all(f"- warning: {w}" in markdown(result).splitlines() for w in result["warnings"])
    with pytest.raises(RtpulseError, match="not found"):  # a missing --real folder fails before scoring
        run_quality(QualityOptions(noisy=tmp_path / "noisy", clean=tmp_path / "clean", real=tmp_path / "gone"))


def test_train_speed_times_the_four_variants_and_reports_ratios_to_the_old_default():
    from benchmarks import train_speed

    if not train_speed.cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16: the benchmark refuses to run (the next test)")
    res = train_speed.measure(presets=("blocks2",), batch_size=1, seconds=0.1, rounds=2, steps=1, threads=1)
    (row,) = res["rows"]
    assert row["steps_timed"] == 2 and set(row["clips_s"]) == {"fp32_default", "fp32_kept", "bf16_default", "bf16_kept"}
    assert row["speedup"]["fp32_default"] == 1.0
    for k, rate in row["clips_s"].items():
        assert row["speedup"][k] == pytest.approx(rate / row["clips_s"]["fp32_default"])
    assert 0 < row["loss_rel_diff"] < 0.02  # bf16 really ran (≠ 0), and changed the loss by little
    assert f"({row['speedup']['bf16_kept']:.2f}×)**" in train_speed.to_markdown(res)


def test_train_speed_refuses_a_cpu_without_native_bf16(monkeypatch):
    from benchmarks import train_speed

    monkeypatch.setattr(train_speed, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(train_speed.RtpulseError, match="no native bf16"):
        train_speed.measure(presets=("blocks2",))


def test_the_bench_progress_shows_names_as_they_are(monkeypatch):
    # a model file named "m[/x].safetensors" raised MarkupError mid-run in a terminal; "[live]" vanished
    import io

    from rich.console import Console

    import rtpulse.cli_bench

    out = io.StringIO()
    monkeypatch.setattr(rtpulse.cli_bench, "console", Console(file=out, force_terminal=True, markup=False, width=120))
    with rtpulse.cli_bench._progress() as progress:
        progress.add_task("quality: m[/x] on [live] take", total=2)
        progress.refresh()
    assert "m[/x] on [live] take" in out.getvalue()


@pytest.mark.parametrize("scale", [4.0, 0.003])  # past full scale (int16 peers clip it), and very quiet
def test_paired_files_reach_the_systems_at_the_generated_sets_level(tmp_path, scale):
    import soundfile as sf

    from benchmarks.quality import paired_set

    rng = np.random.default_rng(0)
    clean = _speechlike(1.0)
    noisy = clean + 0.05 * rng.standard_normal(clean.size).astype(np.float32)
    sf.write(tmp_path / "n.wav", noisy * scale, SR, subtype="FLOAT")
    sf.write(tmp_path / "c.wav", clean * scale, SR, subtype="FLOAT")
    (item,), _ = paired_set(tmp_path / "n.wav", tmp_path / "c.wav")
    level = min(10 ** (-26 / 20), 0.99 * item.noisy.std() / np.abs(item.noisy).max())
    assert item.noisy.std() == pytest.approx(level, rel=1e-3) and np.abs(item.noisy).max() <= 0.99 + 1e-6
    gain = item.noisy.std() / (noisy * scale).std()
    np.testing.assert_allclose(item.clean, clean * scale * gain, rtol=1e-5, atol=1e-7)  # one gain for both


def test_latency_rows_named_alike_keep_their_own_curves_and_a_plotless_run_drops_an_old_histogram(tmp_path):
    from benchmarks.latency import LatencyOptions, latency_outputs, run_latency, write_latency

    (tmp_path / "other").mkdir()
    mine = tmp_path / "other" / "shipped.safetensors"  # named like the shipped row
    save_model(PulseCNN(ModelConfig(preset="blocks2", lookahead=3)).eval(), mine)
    opts = LatencyOptions(hops=10, warmup=2, models=[mine], presets=False, peers=False, profile=False,
                          timing_repeats=2)
    result, hist = run_latency(opts)
    names = [c["name"] for c in result["configs"]]
    assert names == ["shipped", "shipped #2"] and set(hist) == set(names)
    assert [c["preset"] for c in result["configs"]][1] == "blocks2"
    json_path = tmp_path / "lat" / "l.json"
    png = latency_outputs(json_path)[2]
    png.parent.mkdir()
    png.write_bytes(b"an earlier run's histogram")
    write_latency(result, hist, json_path, plot=False)
    assert not png.exists()


def test_a_stretch_of_digital_silence_drawn_for_a_mixture_is_a_one_line_error(tmp_path):
    """A noise recording's silent tail mixed no noise and scaled the speech by 0: an all-zero mixture and reference,
    scored 0 dB for every system (each mean pulled toward 0) and silent in every row."""
    from benchmarks.quality import generated_set
    from rtpulse.audio import write_audio
    from rtpulse.errors import RtpulseError

    _tiny_data(tmp_path)
    rng = np.random.default_rng(0)
    padded = np.concatenate([0.1 * rng.standard_normal(SR), np.zeros(30 * SR)]).astype(np.float32)
    write_audio(tmp_path / "noise" / "dev" / "n.wav", padded, SR)  # 1 s of sound, 30 s of padding
    with pytest.raises(RtpulseError, match=r"n\.wav from .* are digital silence; trim the silence from the noise"):
        generated_set(tmp_path, count=3, seconds=4.0, seed=0)


def test_the_level_option_reaches_given_files_and_real_recordings_and_the_results_record_it(tmp_path):
    import soundfile as sf

    from benchmarks.quality import QualityOptions, paired_set, real_set, run_quality
    from rtpulse.errors import RtpulseError

    rng = np.random.default_rng(0)
    clean = _speechlike(1.0)
    noisy = clean + 0.05 * rng.standard_normal(clean.size).astype(np.float32)
    sf.write(tmp_path / "n.wav", noisy, SR, subtype="FLOAT")
    sf.write(tmp_path / "c.wav", clean, SR, subtype="FLOAT")
    (item,), _ = paired_set(tmp_path / "n.wav", tmp_path / "c.wav", level_dbfs=-40.0)
    assert 20 * np.log10(item.noisy.std()) == pytest.approx(-40.0, abs=0.01)
    (tmp_path / "real").mkdir()
    sf.write(tmp_path / "real" / "r.wav", noisy, SR, subtype="FLOAT")
    assert 20 * np.log10(real_set(tmp_path / "real", level_dbfs=-40.0)[0].noisy.std()) == pytest.approx(-40, abs=0.01)
    opts = QualityOptions(noisy=tmp_path / "n.wav", clean=tmp_path / "c.wav", level_dbfs=-40.0, streaming=False,
                          peers=False, dnsmos=False, baselines=False)
    result, _ = run_quality(opts)
    assert result["test_set"]["level_dbfs"] == -40.0  # a run at another level says so
    with pytest.raises(RtpulseError, match="--level-dbfs"):  # refused for given files too, not ignored
        run_quality(dataclasses.replace(opts, level_dbfs=float("nan")))


def test_a_plotless_quality_run_leaves_no_earlier_plot_beside_its_tables(tmp_path, monkeypatch):
    from benchmarks import quality

    result = {"date": "d", "test_set": {"files": 0}, "systems": {}, "skipped": {}, "notes": []}
    for name in ("quality_bars.png", "quality_spectrograms.png"):
        (tmp_path / name).write_bytes(b"an earlier run's plot")
    monkeypatch.setattr(quality, "have_matplotlib", lambda: False)
    written = quality.write_quality(result, {}, tmp_path)
    assert [p.name for p in written] == ["quality.json", "quality.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quality.json", "quality.md"]


def test_reference_floor_refuses_a_split_that_is_not_a_level(tmp_path):
    import subprocess
    import sys

    (tmp_path / "q.json").write_text(json.dumps({"test_set": {"count": 1}, "systems": {}}))
    for bad in ("nan", "inf", "5"):
        run = subprocess.run([sys.executable, "-m", "benchmarks.reference_floor", str(tmp_path / "q.json"),
                              "--split-db", bad], check=False, capture_output=True, text=True)
        assert run.returncode == 2 and "--split-db must be" in run.stderr and "Traceback" not in run.stderr, bad
