"""Model files: code-carrying pickles are refused without running, broken or mismatched files get one-line
errors, and every preset's config and outputs survive a save/load round trip."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from rtpulse.cli import app
from rtpulse.errors import RtpulseError
from rtpulse.model import PRESETS, ModelConfig, PulseCNN, load_model, save_model

runner = CliRunner()
META = "rtpulse_config"


class _TouchOnLoad:
    """Unpickling this runs ``Path.touch(marker)``: the stand-in for any code an attacker would run."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _one_line(err: RtpulseError) -> str:
    msg = str(err)
    assert msg and "\n" not in msg
    return msg


def _saved(tmp_path, preset="blocks2", **kw) -> pathlib.Path:
    torch.manual_seed(0)
    path = tmp_path / f"{preset}.safetensors"
    save_model(PulseCNN(ModelConfig(preset=preset, **kw)), path)
    return path


def _rewrite_config(path: pathlib.Path, edit) -> None:
    """Keep the tensors, replace the stored config JSON by ``edit(dict) -> dict | str``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    new = edit(json.loads(meta[META]))
    meta[META] = new if isinstance(new, str) else json.dumps(new)
    save_file(tensors, str(path), metadata=meta)


# --- code-carrying pickles ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth", ".bin"])
@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_pickled_payload_is_refused_and_never_runs(tmp_path, suffix, how):
    marker = tmp_path / "payload_ran"
    evil = {"convs.0.weight": torch.zeros(8, 1, 3, 3), "hook": _TouchOnLoad(marker)}
    path = tmp_path / f"evil{suffix}"
    if how == "torch.save":
        torch.save(evil, path)
    else:
        path.write_bytes(pickle.dumps(evil))
    with pytest.raises(RtpulseError) as info:
        load_model(path)
    assert "not an rtpulse model file" in _one_line(info.value)
    assert not marker.exists()
    r = runner.invoke(app, ["denoise", str(tmp_path / "in.wav"), "-o", str(tmp_path / "o.wav"), "-m", str(path)])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert not marker.exists()
    # the payload is live: an unsafe loader would have run it (this is what load_model must never do)
    if how == "pickle":
        pickle.loads(path.read_bytes())
    else:
        plain = tmp_path / "copy.pt"  # torch.load reads a *.safetensors name as safetensors; use a plain name
        plain.write_bytes(path.read_bytes())
        torch.load(plain, weights_only=False)
    assert marker.exists()


def test_a_checkpoint_state_file_carrying_the_payload_is_refused_and_never_runs(tmp_path):
    """Training checkpoints' state files (trainer.checkpoint) hold a pickle: the same payload must not run there."""
    from trainer.checkpoint import load_checkpoint

    marker = tmp_path / "payload_ran"
    (tmp_path / "run" / "ckpt").mkdir(parents=True)
    torch.save({"epoch": 1, "x": _TouchOnLoad(marker)}, tmp_path / "run" / "ckpt" / "epoch-0001.state.pt")
    with pytest.raises(RtpulseError, match="epoch-0001.state.pt is not a readable state file"):
        load_checkpoint(tmp_path / "run")
    assert not marker.exists()


# --- broken and mismatched files ---------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 7, 8, 60, 0.5, -1])
def test_truncated_model_file_is_a_one_line_error(tmp_path, keep):
    path = _saved(tmp_path)
    raw = path.read_bytes()
    n = int(len(raw) * keep) if isinstance(keep, float) else (len(raw) + keep if keep < 0 else keep)
    path.write_bytes(raw[:n])
    with pytest.raises(RtpulseError) as info:
        load_model(path)
    assert str(path) in _one_line(info.value)


def test_header_claiming_a_huge_size_is_a_one_line_error(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes((2**62).to_bytes(8, "little") + b"{}")
    with pytest.raises(RtpulseError) as info:
        load_model(path)
    _one_line(info.value)


@pytest.mark.parametrize(
    "edit,fragment",
    [
        (lambda c: {**c, "preset": "paper"}, "do not match"),  # blocks2 weights, paper config
        (lambda c: {**c, "preset": "blocks3"}, "do not match"),
        (lambda c: {**c, "out_channels": 2}, "shape"),  # same names, one shape differs
        (lambda c: {**c, "preset": "huge"}, "unknown preset"),
        (lambda c: {**c, "lookahead": 99}, "lookahead"),
        (lambda c: {**c, "compress": "cube"}, "compress"),
        (lambda c: {**c, "surprise": 1}, "unknown keys"),
        (lambda c: "{not json", "broken config"),
        (lambda c: "[1, 2]", "broken config"),
        (lambda c: {**c, "lookahead": "2"}, "lookahead must be an integer"),
        (lambda c: {**c, "dropout": "x"}, "dropout"),
        (lambda c: {**c, "out_channels": 10**9}, "out_channels"),  # refused before anything is allocated
        (lambda c: {**c, "mask_sharpness": 0}, "mask_sharpness"),
        (lambda c: {**c, "mask_sharpness": 1e9}, "mask_sharpness"),
        (lambda c: {**c, "mask_sharpness": "2"}, "mask_sharpness"),
        (lambda c: {**c, "mask_sharpness": True}, "mask_sharpness"),
        (lambda c: {**c, "mask_sharpness": float("nan")}, "mask_sharpness"),
        (lambda c: "[" * 100_000 + "]" * 100_000, "broken config"),  # json's RecursionError
        (lambda c: {**c, "level_frames": -5}, "level_frames must be an integer 0…1000"),
        (lambda c: {**c, "level_frames": 10**9}, "level_frames must be an integer 0…1000"),  # 8 GB of state
        (lambda c: {**c, "floor_frames": 1001}, "floor_frames must be an integer 0…1000"),
        (lambda c: {**c, "extra": [1, 2]}, "extra must be a JSON object"),  # tools read it as a dict
        (lambda c: {**c, "extra": None}, "extra must be a JSON object"),
    ],
)
def test_config_that_disagrees_with_the_weights_is_a_one_line_error(tmp_path, edit, fragment):
    path = _saved(tmp_path)
    _rewrite_config(path, edit)
    with pytest.raises(RtpulseError) as info:
        load_model(path)
    msg = _one_line(info.value)
    assert fragment in msg and msg.startswith(str(path))  # names the file, not a CLI option
    assert len(msg) < 300 + len(str(path))


def test_damaged_header_error_is_cut_short(tmp_path):
    path = _saved(tmp_path)
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = bytes(raw[8 : 8 + n]).replace(b'"dtype":"F32"', b'"dtype":"X32"', 1)  # safetensors lists every dtype
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(raw[8 + n :]))
    with pytest.raises(RtpulseError) as info:
        load_model(path)
    assert len(_one_line(info.value)) < 300 + len(str(path))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, value):
    path = _saved(tmp_path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    tensors["convs.1.weight"][0, 0, 1, 1] = value
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(RtpulseError) as info:
        load_model(path)
    assert "convs.1.weight holds NaN or infinite values" in _one_line(info.value)


def test_a_file_from_before_the_frequency_input_loads_without_it(tmp_path):
    path = _saved(tmp_path)
    mag = torch.rand(1, 513, 20)
    want = load_model(path)(mag)
    _rewrite_config(path, lambda c: {k: v for k, v in c.items() if k != "freq_input"})  # as older files are
    old = load_model(path)
    assert old.config.freq_input is False and old.config.input_names == ("magnitude",)
    torch.testing.assert_close(old(mag), want)


def test_safetensors_without_rtpulse_config_is_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(RtpulseError) as info:
        load_model(path)
    assert "no rtpulse config" in _one_line(info.value)


def test_a_header_of_a_million_tensors_is_refused_before_it_is_parsed(tmp_path):
    import json

    path = _saved(tmp_path)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header.update({f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(60_000)})
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    assert len(text) > 2**20  # past MAX_HEADER_BYTES: a real header is a few kB
    with pytest.raises(RtpulseError) as info:  # refused on its length, before safetensors parses 60,000 entries
        load_model(path)
    assert "its header claims" in _one_line(info.value)


def test_missing_file_and_directory_are_one_line_errors(tmp_path):
    with pytest.raises(RtpulseError) as info:  # pathlib raises ENAMETOOLONG rather than answer
        load_model(tmp_path / ("m" * 300 + ".safetensors"))
    assert "cannot read the model file" in _one_line(info.value) and "File name too long" in str(info.value)
    for path, words in ((tmp_path / "absent.safetensors", "not found"), (tmp_path, "is a folder; give a model file")):
        with pytest.raises(RtpulseError) as info:
            load_model(path)
        assert words in _one_line(info.value)


@pytest.mark.parametrize("key", ["lookahead", "level_frames", "floor_frames", "out_channels", "dropout"])
def test_a_boolean_where_a_number_belongs_is_a_broken_config(tmp_path, key):
    """JSON's true is an int to isinstance: it must not reach torch as a pooling size or a channel count."""
    path = _saved(tmp_path)
    _rewrite_config(path, lambda c: {**c, key: True})
    with pytest.raises(RtpulseError) as info:
        load_model(path)
    assert "has a broken config" in _one_line(info.value) and key in str(info.value)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int32])
def test_complex_or_integer_weights_are_refused(tmp_path, dtype):
    path = _saved(tmp_path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["convs.0.weight"] = tensors["convs.0.weight"].to(dtype)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(RtpulseError) as info:
        load_model(path)
    assert f"tensor convs.0.weight holds {dtype}" in _one_line(info.value)


def test_a_float64_model_file_loads_as_the_same_model(tmp_path):
    """float64 tensors of the right shapes: converted to float32, the same outputs."""
    path = _saved(tmp_path)
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    ref = load_model(path)
    tensors = {k: v.double() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata=meta)
    model = load_model(path)  # real floating point: converted to float32 (complex and integer: refused, below)
    mag = torch.rand(1, 513, 20)
    torch.testing.assert_close(model(mag), ref(mag))


# --- round trips -------------------------------------------------------------------------------------

CONFIGS = [
    ModelConfig(preset=p, lookahead=la, compress=c, method=m, mask_sharpness=s)
    for s, p in [(1.0, p) for p in PRESETS] + [(2.5, "blocks2")]
    for la, c, m in [(0, "power", "pu"), (ModelConfig(preset=p).max_lookahead, "linear", "pn"), (1, "log1p", "mixit")]
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.preset}-L{c.lookahead}-{c.compress}-{c.method}")
def test_config_json_round_trip_and_save_load_gives_same_outputs(tmp_path, config):
    config = ModelConfig(**{**config.__dict__, "extra": {"note": "π ≈ 3.14", "scores": [1.5, 2]}})
    assert ModelConfig.from_json(config.to_json()) == config
    torch.manual_seed(3)
    model = PulseCNN(config).eval()
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    loaded = load_model(path)
    assert loaded.config == config
    assert not loaded.training
    mag = torch.rand(2, 513, 25) * 3
    out = model(mag)
    torch.testing.assert_close(loaded(mag), out, rtol=0, atol=0)
    assert out.abs().max() > 0


def test_save_is_atomic_and_replaces_an_old_model(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    before = path.read_bytes()

    def disk_full_half_way(tmp, data):
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("rtpulse.model.write_synced", disk_full_half_way)
    with pytest.raises(RtpulseError, match=f"cannot write {path}: No space left on device"):  # the user's name
        save_model(PulseCNN(ModelConfig(preset="paper")), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_saved_model_has_the_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        path = _saved(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # 0666 & ~umask, like any file the user creates


def test_a_model_file_from_before_mask_sharpness_loads_with_the_plain_soft_mask(tmp_path):
    path = _saved(tmp_path)
    _rewrite_config(path, lambda c: {k: v for k, v in c.items() if k != "mask_sharpness"})
    assert load_model(path).config.mask_sharpness == 1.0


def test_model_and_text_files_reach_the_disk_before_their_rename(tmp_path, monkeypatch):
    # renamed over an old file, data still in the page cache could leave an empty file after a power cut
    from rtpulse.files import write_text_atomic

    order = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: order.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: order.append("replace") or real_replace(a, b))
    save_model(PulseCNN(ModelConfig()), tmp_path / "m.safetensors")
    write_text_atomic(tmp_path / "r.json", "{}")
    assert order == ["fsync", "replace", "fsync", "replace"]


def test_a_file_system_without_fsync_still_saves(tmp_path, monkeypatch):
    import errno

    def unsupported(fd):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "fsync", unsupported)
    save_model(PulseCNN(ModelConfig()), tmp_path / "m.safetensors")
    assert load_model(tmp_path / "m.safetensors").config == ModelConfig()


# --- what a later review found -----------------------------------------------------------------------


def test_a_deeply_nested_extra_is_a_broken_config_not_a_model_that_cannot_be_saved(tmp_path):
    """json reads ~1000 levels, but writing the config back (dataclasses.asdict) failed past ~450 with a
    RecursionError traceback: benchmarks.mask_sharpness --write after minutes of scoring, the training table."""
    path = _saved(tmp_path)
    _rewrite_config(path, lambda c: json.dumps({**c, "extra": "X"}).replace('"X"', '{"a": ' * 500 + "1" + "}" * 500))
    with pytest.raises(RtpulseError) as info:
        load_model(path)
    assert "has a broken config: extra nests deeper than 32 levels" in _one_line(info.value)
    # a trainer's notes (three levels) and anything up to the bound load and are written back
    _rewrite_config(path, lambda c: {**c, "extra": json.loads('{"a": ' * 32 + "1" + "}" * 32)})
    model = load_model(path)
    save_model(model, tmp_path / "again.safetensors")
    assert load_model(tmp_path / "again.safetensors").config == model.config


def test_a_config_that_is_not_a_json_object_says_so(tmp_path):
    path = _saved(tmp_path)
    _rewrite_config(path, lambda c: '"preset"')  # was: "unknown keys: e, p, r, s, t" (the string's letters)
    with pytest.raises(RtpulseError) as info:
        load_model(path)
    assert "has a broken config: the config must be a JSON object, got str" in _one_line(info.value)


def test_a_pipe_a_device_or_a_link_loop_as_model_is_named_for_what_it_is(tmp_path):
    """They exist (or are links): "model file not found" sent the user looking for a missing file."""
    fifo, loop, dangling = tmp_path / "fifo", tmp_path / "loop", tmp_path / "dangling"
    os.mkfifo(fifo)
    loop.symlink_to(loop)
    dangling.symlink_to(tmp_path / "absent.safetensors")
    for path, words in ((fifo, "is not a regular file"), (pathlib.Path("/dev/null"), "is not a regular file"),
                        (loop, "is a link that leads to no file"), (dangling, "is a link that leads to no file")):
        with pytest.raises(RtpulseError) as info:
            load_model(path)
        assert words in _one_line(info.value) and str(path) in str(info.value)


def test_denoise_and_live_never_write_over_the_model_file(tmp_path):
    """A model is an input too: one named like audio, given as the output with --force, was replaced by audio."""
    import numpy as np
    import soundfile as sf

    src = tmp_path / "in.wav"
    sf.write(src, np.zeros(16000, np.float32), 16000)
    model = tmp_path / "m.wav"  # load_model does not ask for a .safetensors name
    save_model(PulseCNN(ModelConfig()), model)
    before = model.read_bytes()
    for args in (["denoise", str(src), "-o", str(model), "-m", str(model), "--force"],
                 ["denoise", str(src), "-o", f"{tmp_path}/../{tmp_path.name}/m.wav", "-m", str(model), "--force"],
                 ["live", "-m", str(model), "--record-in", str(model), "--force"],
                 ["live", "-m", str(model), "--record-out", str(model), "--force"]):
        r = runner.invoke(app, args)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 1 and len(lines) == 1 and "is the same file as" in lines[0], (args, r.output)
        assert model.read_bytes() == before


def test_init_from_a_model_whose_finite_weights_overflow_is_refused_before_training(tmp_path):
    """Weights of 1e30 pass the file's NaN check; training from them ran a whole epoch of NaN losses, then blamed
    the learning rate ("training diverged: … lower --lr")."""
    from trainer.config import TrainConfig
    from trainer.train import build_model

    model = PulseCNN(ModelConfig())
    with torch.no_grad():
        for conv in model.convs:
            conv.weight.copy_(1e30 * torch.randn_like(conv.weight).sign())
    save_model(model, tmp_path / "huge.safetensors")
    cfg = {"out": str(tmp_path / "run"), "clean": "c", "noise": "n", "device": "cpu"}
    with pytest.raises(RtpulseError) as info:
        build_model(TrainConfig(**cfg, init_from=str(tmp_path / "huge.safetensors")))
    assert "huge.safetensors: the model's output is not finite: its weights overflow float32" in _one_line(info.value)
    save_model(PulseCNN(ModelConfig()), tmp_path / "fine.safetensors")  # an ordinary model still starts a run
    build_model(TrainConfig(**cfg, init_from=str(tmp_path / "fine.safetensors")))


def test_bench_quality_reads_its_models_before_the_test_set(tmp_path, monkeypatch):
    """A broken --model was said only after the test set was generated or decoded (minutes)."""
    from benchmarks import quality

    def decoded(*a, **k):
        raise AssertionError("the test set was read before the models")

    monkeypatch.setattr(quality, "generated_set", decoded)
    monkeypatch.setattr(quality, "paired_set", decoded)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\0" * 4096)
    opts = quality.QualityOptions(data=tmp_path, models=[bad], peers=False, dnsmos=False)
    with pytest.raises(RtpulseError) as info:
        quality.run_quality(opts)
    assert "bad.safetensors is not an rtpulse model file" in _one_line(info.value)
