"""`rtpulse eval` on file pairs whose enhanced output is known in closed form."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from rtpulse.cli import app
from rtpulse.model import ModelConfig, PulseCNN, save_model

SNR_DB = 6.0


def constant_model(path, logit: float):
    """All weights zero, last bias = ``logit``: f ≡ logit, so the mask is the same in every bin."""
    model = PulseCNN(ModelConfig(preset="blocks2", dropout=0.0))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.convs[-1].bias.fill_(logit)
    save_model(model, path)
    return path


@pytest.fixture
def pair(tmp_path):
    """clean = 500 Hz sine, noise = 1 kHz sine (orthogonal over whole periods) at 6 dB: SI-SNR(noisy) = 6 dB."""
    t = np.arange(16000) / 16000
    clean = 0.4 * np.sin(2 * np.pi * 500 * t)
    noise = 0.4 * 10 ** (-SNR_DB / 20) * np.sin(2 * np.pi * 1000 * t)
    (tmp_path / "noisy" / "a").mkdir(parents=True)
    (tmp_path / "clean" / "a").mkdir(parents=True)
    sf.write(tmp_path / "noisy" / "a" / "utt.wav", (clean + noise).astype(np.float32), 16000, subtype="FLOAT")
    sf.write(tmp_path / "clean" / "a" / "utt.wav", clean.astype(np.float32), 16000, subtype="FLOAT")
    sf.write(tmp_path / "noisy" / "unpaired.wav", noise.astype(np.float32), 16000)
    return tmp_path


def run_eval(tmp_path, model, *extra, with_output: bool = False):
    """``eval`` of tmp_path/noisy against tmp_path/clean: its JSON report (and what it printed, ``with_output``)."""
    out = tmp_path / "scores.json"
    res = CliRunner().invoke(app, ["eval", "--model", str(model), "--noisy", str(tmp_path / "noisy"),
                                   "--clean", str(tmp_path / "clean"), "--json", str(out), "--force", *extra])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    return (report, res.output) if with_output else report


@pytest.mark.parametrize("engine", ["offline", "stream"])
def test_identity_mask_scores_the_noisy_input(pair, engine):
    # f ≡ −1 < 0: every bin speech, binary gain 1 → output = input (perfect reconstruction)
    r = run_eval(pair, constant_model(pair / "keep.safetensors", -1.0), "--engine", engine)
    assert r["count"] == 1 and r["files"][0]["name"] == "a/utt"
    assert r["model_file"] == str(pair / "keep.safetensors")
    assert r["files"][0]["si_snr"] == pytest.approx(SNR_DB, abs=0.01)
    assert r["files"][0]["si_snri"] == pytest.approx(0.0, abs=0.01)
    assert r["mean"]["si_snri"] == pytest.approx(0.0, abs=0.01)


def test_all_noise_mask_loses_the_input_snr(pair):
    # f ≡ +1: every bin noise → silent output; SI-SNR(0) is the −80 dB floor (not 0 dB, which would beat a noisy
    # input below 0 dB), so SI-SNRi = −80 − 6 dB
    r = run_eval(pair, constant_model(pair / "drop.safetensors", 1.0))
    assert r["files"][0]["si_snr"] == pytest.approx(-80.0, abs=0.01)
    assert r["files"][0]["si_snri"] == pytest.approx(-80.0 - SNR_DB, abs=0.01)


def test_gain_floor_and_soft_mask_are_passed_through(pair):
    drop = constant_model(pair / "drop.safetensors", 1.0)
    # binary gain 0 floored at −6.02 dB = ×0.5 everywhere: a scaled input, SI-SNRi 0
    assert run_eval(pair, drop, "--floor-db", "-6.0206")["mean"]["si_snri"] == pytest.approx(0.0, abs=0.01)
    # soft gain σ(−1) everywhere: also a scaled input
    assert run_eval(pair, drop, "--mask", "soft")["mean"]["si_snri"] == pytest.approx(0.0, abs=0.01)


def test_pesq_and_stoi_when_installed(tmp_path):
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    rng = np.random.default_rng(0)
    t = np.arange(3 * 16000) / 16000
    speech = (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 1.5 * t) > 0) + 0.01 * rng.standard_normal(t.size))
    for d in ("noisy", "clean"):
        (tmp_path / d).mkdir()
        sf.write(tmp_path / d / "x.wav", speech.astype(np.float32), 16000, subtype="FLOAT")
    r = run_eval(tmp_path, constant_model(tmp_path / "keep.safetensors", -1.0))
    assert r["mean"]["stoi"] == pytest.approx(1.0, abs=1e-3)  # output = reference
    assert r["mean"]["pesq_wb"] > 4.5  # PESQ-WB of a signal against itself: 4.64


def test_synthetic_mixtures_are_seeded_and_not_written(pair, tmp_path):
    (tmp_path / "noise").mkdir()
    sf.write(tmp_path / "noise" / "n.wav", np.random.default_rng(1).standard_normal(20000).astype(np.float32), 16000)
    keep = constant_model(tmp_path / "keep.safetensors", -1.0)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    args = ["eval", "--model", str(keep), "--synth", "--clean", str(pair / "clean"), "--noise", str(tmp_path / "noise"),
            "--count", "3", "--seconds", "0.5", "--cache", str(tmp_path / "cache")]
    a = CliRunner().invoke(app, [*args, "--seed", "1", "--json", str(tmp_path / "a.json")])
    b = CliRunner().invoke(app, [*args, "--seed", "1", "--json", str(tmp_path / "b.json")])
    c = CliRunner().invoke(app, [*args, "--seed", "2", "--json", str(tmp_path / "c.json")])
    assert a.exit_code == b.exit_code == c.exit_code == 0, a.output
    ra, rb, rc = (json.loads((tmp_path / f"{k}.json").read_text()) for k in "abc")
    noisy_snrs = [f["si_snr_noisy"] for f in ra["files"]]
    assert ra["count"] == 3 and all(-7 < s < 12 for s in noisy_snrs)  # mixed at U[−5, 10] dB
    assert (ra["seed"], ra["seconds"]) == (1, 0.5)  # the JSON says how its mixtures were made
    assert ra["mean"]["si_snri"] == pytest.approx(0.0, abs=0.01)  # identity mask
    assert noisy_snrs == [f["si_snr_noisy"] for f in rb["files"]]
    assert noisy_snrs != [f["si_snr_noisy"] for f in rc["files"]]
    written = sorted(p.name for p in tmp_path.rglob("*") if p.suffix in (".wav", ".flac", ".ogg"))
    assert written == sorted(n for n in before if n.endswith(".wav"))


def test_eval_errors_are_one_line(tmp_path):
    (tmp_path / "n").mkdir()
    (tmp_path / "c").mkdir()
    sf.write(tmp_path / "n" / "x.wav", np.zeros(1600, np.float32), 16000)
    sf.write(tmp_path / "c" / "y.wav", np.zeros(1600, np.float32), 16000)
    keep = constant_model(tmp_path / "keep.safetensors", -1.0)
    res = CliRunner().invoke(app, ["eval", "--model", str(keep), "--noisy", str(tmp_path / "n"), "--clean", str(tmp_path / "c")])
    assert res.exit_code == 1 and "clean partner" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["eval", "--model", str(tmp_path / "missing.safetensors"), "--synth"])
    assert res.exit_code == 1 and "not found" in res.output


def test_two_files_pair_whatever_their_names_and_the_shipped_model_is_the_default(pair):
    from rtpulse.metrics import si_snri
    from rtpulse.model import default_model_path, load_model
    from rtpulse.stream import enhance

    noisy, clean = pair / "noisy" / "a" / "utt.wav", pair / "clean" / "a" / "reference.wav"
    (pair / "clean" / "a" / "utt.wav").rename(clean)
    out = pair / "scores.json"
    res = CliRunner().invoke(app, ["eval", "--noisy", str(noisy), "--clean", str(clean), "--json", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["count"] == 1 and r["mask"] == load_model(default_model_path()).config.mask
    x, s = sf.read(noisy, dtype="float32")[0], sf.read(clean, dtype="float32")[0]
    shipped = load_model(default_model_path()).eval()
    with torch.no_grad():
        expected = si_snri(enhance(shipped, torch.from_numpy(x), r["mask"]).numpy(), x, s)
    assert r["files"][0]["si_snri"] == pytest.approx(expected, abs=1e-4)


def test_json_never_replaces_an_input_or_lands_in_a_folder(pair):
    """`--json` naming an input (given directly or inside an input folder), the model, a folder, or a path under a
    file is refused before scoring, and every file is intact."""
    keep = constant_model(pair / "keep.safetensors", -1.0)
    noisy, clean = pair / "noisy" / "a" / "utt.wav", pair / "clean" / "a" / "utt.wav"
    (pair / "afile").write_text("mine")
    (pair / "d.json").mkdir()
    before = {p: p.read_bytes() for p in (noisy, clean, keep, pair / "afile")}
    for target, message in ((noisy, "ending in .json"), (clean, "ending in .json"), (keep, "ending in .json"),
                            (pair / "d.json", "is a directory"), (pair / "afile" / "s.json", "is a file, not a folder")):
        res = CliRunner().invoke(app, ["eval", "--model", str(keep), "--noisy", str(pair / "noisy"),
                                       "--clean", str(pair / "clean"), "--json", str(target)])
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 1 and len(lines) == 1 and message in lines[0], res.output
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.parametrize("floor", ["nan", "inf", "3", "1e5", "-1000"])
def test_bad_floor_db_is_one_line_error(pair, floor):
    keep = constant_model(pair / "keep.safetensors", -1.0)
    res = CliRunner().invoke(app, ["eval", "--model", str(keep), "--noisy", str(pair / "noisy"), "--clean",
                                   str(pair / "clean"), f"--floor-db={floor}"])
    assert res.exit_code == 1 and "--floor-db must be -200…0 dB" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("samples", [1024, 4800])  # pystoi fails on the first, returns its 1e-5 sentinel on the second
def test_too_short_for_stoi_is_a_gap_not_a_score(tmp_path, samples):
    pytest.importorskip("pystoi")
    x = np.random.default_rng(0).standard_normal(samples).astype(np.float32) * 0.1
    sf.write(tmp_path / "n.wav", x, 16000, subtype="FLOAT")
    sf.write(tmp_path / "c.wav", x, 16000, subtype="FLOAT")
    keep = constant_model(tmp_path / "keep.safetensors", -10.0)
    res = CliRunner().invoke(app, ["eval", "--model", str(keep), "--noisy", str(tmp_path / "n.wav"), "--clean",
                                   str(tmp_path / "c.wav"), "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "s.json").read_text())
    row = result["files"][0]
    assert row["stoi"] is None and "stoi" not in result["mean"]
    assert row["si_snri"] == pytest.approx(0.0, abs=1e-3)  # mask of ones: output = input
    assert "stoi: no file could be scored (too short for it, or silent outputs?), so it has no mean" in result["warnings"]


@pytest.mark.parametrize("extra", [["--count", "0"], ["--seconds", "0"], ["--seconds", "inf"]])
def test_synth_needs_mixtures_of_at_least_one_frame(pair, extra):
    keep = constant_model(pair / "keep.safetensors", -1.0)
    res = CliRunner().invoke(app, ["eval", "--model", str(keep), "--synth", "--clean", str(pair / "clean"),
                                   "--noise", str(pair / "noisy"), *extra])
    assert res.exit_code == 1 and "--count must be ≥ 1 and --seconds ≥ 0.064" in res.output, res.output


def one_line_error(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


@pytest.mark.parametrize(("which", "samples", "words"), [
    ("noisy", np.zeros(0, np.float32), "holds 0 samples at 16 kHz, under one STFT frame (1024): too short to score"),
    ("clean", np.zeros(0, np.float32), "holds 0 samples at 16 kHz, under one STFT frame (1024): too short to score"),
    # one sample is always a scaled copy of another: its SI-SNR would be the ~74 dB cap, entering the mean
    ("clean", np.full(1, 0.4, np.float32), "holds 1 samples at 16 kHz, under one STFT frame"),
    ("noisy", np.full(1023, 0.4, np.float32), "holds 1023 samples at 16 kHz, under one STFT frame"),
    ("noisy", np.r_[np.zeros(800), np.nan, np.zeros(799)].astype(np.float32), "holds 1 non-finite sample(s)"),
    ("clean", np.r_[np.full(3, np.inf), np.zeros(1597)].astype(np.float32), "holds 3 non-finite sample(s)"),
    ("clean", np.zeros(1600, np.float32), "is silent (every sample is 0)"),  # SI-SNRi against it: a number, no meaning
    ("noisy", np.zeros(1600, np.float32), "is silent (every sample is 0)"),
])
def test_empty_or_non_finite_input_is_refused_not_scored(tmp_path, which, samples, words):
    x = (0.1 * np.random.default_rng(0).standard_normal(1600)).astype(np.float32)
    files = {"noisy": tmp_path / "n.wav", "clean": tmp_path / "c.wav"}
    for name, path in files.items():
        sf.write(path, samples if name == which else x, 16000, subtype="FLOAT")
    keep = constant_model(tmp_path / "keep.safetensors", -1.0)
    res = CliRunner().invoke(app, ["eval", "--model", str(keep), "--noisy", str(files["noisy"]), "--clean",
                                   str(files["clean"]), "--json", str(tmp_path / "s.json")])
    line = one_line_error(res)
    assert words in line and str(files[which]) in line
    assert not (tmp_path / "s.json").exists()


def test_folder_mode_warns_of_unpaired_files_and_of_pairs_cut_to_the_shorter(pair):
    # a second pair whose noisy file is 80 samples (0.5 %) longer, the extra tail loud noise: scored over the
    # first 16000 samples it is the 6 dB mixture; scored over the whole file (zero-padded clean) it would be lower
    clean = sf.read(pair / "clean" / "a" / "utt.wav", dtype="float32")[0]
    noisy = sf.read(pair / "noisy" / "a" / "utt.wav", dtype="float32")[0]
    sf.write(pair / "clean" / "long.wav", clean, 16000, subtype="FLOAT")
    sf.write(pair / "noisy" / "long.wav", np.r_[noisy, np.ones(80, np.float32)], 16000, subtype="FLOAT")
    r, printed = run_eval(pair, constant_model(pair / "keep.safetensors", -1.0), with_output=True)
    assert [f["name"] for f in r["files"]] == ["a/utt", "long"]
    assert r["files"][1]["si_snr"] == pytest.approx(SNR_DB, abs=0.01)
    unpaired = f"1 noisy file(s) without a clean partner in {pair / 'clean'} skipped: unpaired"
    cut = "1 pair(s) differ in length (by up to 5.0 ms), scored over the shorter: long"
    assert r["warnings"][:2] == [unpaired, cut]
    assert f"warning: {unpaired}" in printed.splitlines() and f"warning: {cut}" in printed.splitlines()


def test_pair_of_very_different_lengths_is_an_error(pair):
    clean = sf.read(pair / "clean" / "a" / "utt.wav", dtype="float32")[0]
    sf.write(pair / "clean" / "a" / "utt.wav", clean[:15000], 16000, subtype="FLOAT")  # 6.25 % shorter
    keep = constant_model(pair / "keep.safetensors", -1.0)
    res = CliRunner().invoke(app, ["eval", "--model", str(keep), "--noisy", str(pair / "noisy"),
                                   "--clean", str(pair / "clean")])
    line = one_line_error(res)
    assert "(1.000 s)" in line and "(0.938 s)" in line and "differ in length by more than 5%" in line


def test_each_mean_says_over_how_many_files(tmp_path):
    pytest.importorskip("pystoi")
    rng = np.random.default_rng(0)
    for d in ("noisy", "clean"):
        (tmp_path / d).mkdir()
    for name, samples in (("long", 16000), ("tiny", 2000)):  # pystoi cannot score 2000 samples: no STOI for tiny
        x = (0.1 * rng.standard_normal(samples)).astype(np.float32)
        sf.write(tmp_path / "clean" / f"{name}.wav", x, 16000, subtype="FLOAT")
        sf.write(tmp_path / "noisy" / f"{name}.wav", x + 0.05 * rng.standard_normal(samples).astype(np.float32),
                 16000, subtype="FLOAT")
    r, printed = run_eval(tmp_path, constant_model(tmp_path / "keep.safetensors", -1.0), with_output=True)
    rows = {f["name"]: f for f in r["files"]}
    assert rows["tiny"]["stoi"] is None and rows["long"]["stoi"] is not None
    assert r["mean"]["stoi"] == rows["long"]["stoi"]
    assert r["mean"]["si_snr"] == pytest.approx((rows["long"]["si_snr"] + rows["tiny"]["si_snr"]) / 2)
    assert r["mean_files"]["stoi"] == 1 and r["mean_files"]["si_snr"] == r["mean_files"]["si_snri"] == 2
    assert "warning: stoi mean over 1 of 2 files (no score for tiny)" in printed.splitlines()
    if "pesq_wb" in r["mean"]:  # under ¼ s for pesq too: the note says what it takes
        assert "pesq_wb mean over 1 of 2 files (no score for tiny: pesq takes ¼…30 s with speech in it)" in printed
    counts = next(ln for ln in printed.splitlines() if "files in mean" in ln)
    cells = [c.strip() for c in counts.split("│") if c.strip()]  # file, si_snr, si_snr_noisy, si_snri, (pesq), stoi
    assert cells[:4] == ["files in mean", "2", "2", "2"] and cells[-1] == "1"


@pytest.mark.parametrize(("count", "seconds"), [("10001", "0.1"), ("2", "601"), ("2", "1e9"), ("100000000", "1"),
                                                ("1000", "10")])
def test_synth_sizes_are_bounded_before_any_work(tmp_path, count, seconds):
    keep = constant_model(tmp_path / "keep.safetensors", -1.0)
    # the folders do not exist: the bound is checked before they are read
    res = CliRunner().invoke(app, ["eval", "--model", str(keep), "--synth", "--clean", str(tmp_path / "none"),
                                   "--noise", str(tmp_path / "none"), "--count", count, "--seconds", seconds])
    line = one_line_error(res)
    assert "--count must be ≤ 10000, --seconds ≤ 600 and --count × --seconds ≤ 3600" in line


def test_synth_sizes_at_the_bounds_are_accepted(tmp_path):
    keep = constant_model(tmp_path / "keep.safetensors", -1.0)
    for count, seconds in (("10000", "0.36"), ("6", "600")):  # 3600 s of audio each: past the bound check
        res = CliRunner().invoke(app, ["eval", "--model", str(keep), "--synth", "--clean", str(tmp_path / "none"),
                                       "--noise", str(tmp_path / "none"), "--count", count, "--seconds", seconds])
        assert "not found" in one_line_error(res)


def test_an_existing_json_is_kept_unless_forced(pair):
    keep = constant_model(pair / "keep.safetensors", -1.0)
    target = pair / "config.json"
    target.write_text('{"a run": "config"}')
    args = ["eval", "--model", str(keep), "--noisy", str(pair / "noisy"), "--clean", str(pair / "clean"),
            "--json", str(target)]
    line = one_line_error(CliRunner().invoke(app, args))
    assert "exists; pass --force to replace it" in line and target.read_text() == '{"a run": "config"}'
    assert CliRunner().invoke(app, [*args, "--force"]).exit_code == 0
    assert json.loads(target.read_text())["count"] == 1


def test_synth_refuses_a_huge_seed_and_names_a_file_with_nan(pair, tmp_path):
    keep = constant_model(tmp_path / "keep.safetensors", -1.0)
    (tmp_path / "noise").mkdir()
    x = np.random.default_rng(1).standard_normal(20000).astype(np.float32)
    sf.write(tmp_path / "noise" / "n.wav", x, 16000, subtype="FLOAT")
    args = ["eval", "--model", str(keep), "--synth", "--clean", str(pair / "clean"), "--noise", str(tmp_path / "noise"),
            "--count", "2", "--seconds", "0.5", "--cache", str(tmp_path / "cache")]
    assert "--seed must be 0…4294967295" in one_line_error(CliRunner().invoke(app, [*args, "--seed", "99999999999999999999"]))
    x[5000] = np.nan
    sf.write(tmp_path / "noise" / "n.wav", x, 16000, subtype="FLOAT")
    line = one_line_error(CliRunner().invoke(app, [*args, "--json", str(tmp_path / "s.json")]))
    assert "n.wav holds NaN or infinite samples" in line and not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("room_tone", [0.0, 1e-4])  # digital silence, or a −80 dBFS floor as real recordings have
def test_synth_leaves_out_silent_clean_files_and_silent_crops(tmp_path, room_tone):
    keep = constant_model(tmp_path / "keep.safetensors", -1.0)
    t = np.arange(16000) / 16000
    for d in ("clean", "noise", "silent"):
        (tmp_path / d).mkdir()
    # speech for the first 0.25 s, then 1.75 s of silence: many 0.5 s crops hold no speech at all (mixing scales each
    # crop to its SNR, so a −80 dBFS floor would become a "speech" reference as loud as any)
    pause = room_tone * np.random.default_rng(2).standard_normal(28000)
    voice = np.concatenate([0.4 * np.sin(2 * np.pi * 500 * t[:4000]), pause]).astype(np.float32)
    sf.write(tmp_path / "clean" / "voice.wav", voice, 16000, subtype="FLOAT")
    sf.write(tmp_path / "clean" / "zeros.wav", np.zeros(32000, np.float32), 16000)
    sf.write(tmp_path / "silent" / "zeros.wav", np.zeros(32000, np.float32), 16000)
    sf.write(tmp_path / "noise" / "n.wav", np.random.default_rng(1).standard_normal(20000).astype(np.float32), 16000)
    args = ["eval", "--model", str(keep), "--synth", "--noise", str(tmp_path / "noise"), "--count", "12",
            "--seconds", "0.5", "--cache", str(tmp_path / "cache"), "--seed", "3"]
    res = CliRunner().invoke(app, [*args, "--clean", str(tmp_path / "clean"), "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "s.json").read_text())
    assert any("left out 1 empty or silent --clean file(s): " in w and "zeros.wav" in w for w in report["warnings"])
    crops = [w for w in report["warnings"] if "whose clean crop is silent" in w]
    assert len(crops) == 1 and crops[0].startswith(f"left out {12 - report['count']} of 12 mixtures")
    assert 0 < report["count"] < 12  # some crops hold speech, some only silence
    assert all(-7 < f["si_snr_noisy"] < 12 for f in report["files"])  # only mixtures made at −5…10 dB are scored
    line = one_line_error(CliRunner().invoke(app, [*args, "--clean", str(tmp_path / "silent")]))
    assert f"{tmp_path / 'silent' / 'zeros.wav'} is empty or silent: nothing to train or score on" in line
    sf.write(tmp_path / "silent" / "empty.wav", np.zeros(0, np.float32), 16000)
    line = one_line_error(CliRunner().invoke(app, [*args, "--clean", str(tmp_path / "silent")]))
    assert f"every audio file under {tmp_path / 'silent'} is empty or silent" in line


def test_the_results_table_goes_to_stdout_with_file_names_as_they_are(pair, tmp_path):
    # `rtpulse eval ... > scores.txt` keeps the table; "[b]" in a name is a name, not rich's bold tag
    for side in ("noisy", "clean"):
        (pair / side / "a" / "utt.wav").rename(pair / side / "a" / "[b]utt [i].wav")
    constant_model(tmp_path / "m.safetensors", -10.0)
    res = CliRunner().invoke(app, ["eval", "--model", str(tmp_path / "m.safetensors"), "--noisy", str(pair / "noisy"),
                                   "--clean", str(pair / "clean")])
    assert res.exit_code == 0, res.output
    assert "[b]utt [i]" in res.stdout and "mean" in res.stdout and "si_snri" in res.stdout
    assert "si_snri" not in res.stderr


def test_without_the_eval_extra_the_report_says_why_pesq_and_stoi_are_absent(pair, tmp_path, monkeypatch):
    import rtpulse.metrics

    r = run_eval(pair, constant_model(tmp_path / "m.safetensors", -10.0))
    assert not any("rtpulse[eval]" in w for w in r["warnings"])  # installed here: nothing to say
    monkeypatch.setattr(rtpulse.metrics, "perceptual_scores", lambda est, ref, rate=16000: {})  # as without the extra
    monkeypatch.setattr("trainer.evaluate.perceptual_scores", lambda est, ref, rate=16000: {})
    r = run_eval(pair, tmp_path / "m.safetensors")
    assert "pesq_wb and stoi not scored: pip install 'rtpulse[eval]' for them" in r["warnings"]
    assert "pesq_wb" not in r["mean"] and "si_snri" in r["mean"]


def test_pairing_by_path_extension_and_name_never_borrows_another_files_partner(tmp_path):
    from trainer.evaluate import pair_files

    tone = (0.1 * np.sin(np.arange(2048) / 5)).astype(np.float32)
    for rel in ("noisy/spk_a/001.wav", "noisy/spk_b/001.wav", "clean/spk_a/001.wav",  # spk_b's clean file missing
                "noisy/x.wav", "noisy/x.flac", "clean/x.wav", "clean/x.flac",  # one name, two formats, two pairs
                "noisy/snr0/utt.wav", "noisy/snr5/utt.wav", "clean/utt.wav",  # two mixtures of one reference
                "clean/unused.wav"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / rel, tone, 16000)
    pairs, unpaired, unused = pair_files(tmp_path / "noisy", tmp_path / "clean")
    got = {name: str(c.relative_to(tmp_path / "clean")) for name, _, c in pairs}
    assert got == {"spk_a/001": "spk_a/001.wav", "x.wav": "x.wav", "x.flac": "x.flac", "snr0/utt": "utt.wav",
                   "snr5/utt": "utt.wav"}
    assert unpaired == ["spk_b/001"]  # not scored against speaker a's reference
    assert unused == ["unused.wav"]


def test_overlapping_folders_are_refused_and_unused_references_are_said(pair, tmp_path):
    keep = constant_model(tmp_path / "keep.safetensors", -1.0)
    for noisy, clean in ((pair, pair / "clean"), (pair / "noisy", pair), (pair / "noisy", pair / "noisy")):
        res = CliRunner().invoke(app, ["eval", "--model", str(keep), "--noisy", str(noisy), "--clean", str(clean)])
        assert "overlap (one holds the other)" in one_line_error(res)
    (pair / "link.wav").symlink_to(pair / "clean" / "a" / "utt.wav")  # one file under two names
    res = CliRunner().invoke(app, ["eval", "--model", str(keep), "--noisy", str(pair / "link.wav"), "--clean",
                                   str(pair / "clean" / "a" / "utt.wav")])
    assert "are the same file" in one_line_error(res)
    sf.write(pair / "clean" / "spare.wav", np.ones(2048, np.float32) * 0.1, 16000)
    r = run_eval(pair, keep)
    assert f"1 clean file(s) in {pair / 'clean'} without a noisy partner: spare.wav" in r["warnings"]


def test_long_file_names_stay_whole_in_a_piped_table(pair, tmp_path):
    long = "clean_fileid_0_snr5_tl-21_" + "x" * 60
    for side in ("noisy", "clean"):
        (pair / side / "a" / "utt.wav").rename(pair / side / "a" / f"{long}.wav")
    keep = constant_model(tmp_path / "keep.safetensors", -1.0)
    res = CliRunner().invoke(app, ["eval", "--model", str(keep), "--noisy", str(pair / "noisy"), "--clean",
                                   str(pair / "clean")])  # the runner's console is 80 columns, as a pipe's
    assert res.exit_code == 0, res.output
    assert "…" not in res.stdout
    assert long in "".join(ln.split("│")[1].strip() for ln in res.stdout.splitlines() if ln.count("│") > 2)


def test_synth_keeps_speech_from_a_quiet_file_silence_is_judged_per_file(tmp_path):
    keep = constant_model(tmp_path / "keep.safetensors", -1.0)
    t = np.arange(32000) / 16000
    for d in ("clean", "noise"):
        (tmp_path / d).mkdir()
    tone = np.sin(2 * np.pi * 500 * t)
    sf.write(tmp_path / "clean" / "loud.wav", (0.4 * tone).astype(np.float32), 16000, subtype="FLOAT")
    sf.write(tmp_path / "clean" / "quiet.wav", (0.002 * tone).astype(np.float32), 16000, subtype="FLOAT")  # −46 dB
    sf.write(tmp_path / "noise" / "n.wav", np.random.default_rng(1).standard_normal(20000).astype(np.float32), 16000)
    res = CliRunner().invoke(app, ["eval", "--model", str(keep), "--synth", "--noise", str(tmp_path / "noise"),
                                   "--clean", str(tmp_path / "clean"), "--count", "12", "--seconds", "0.5",
                                   "--cache", str(tmp_path / "cache"), "--seed", "3", "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["count"] == 12 and not any("clean crop is silent" in w for w in report["warnings"])
