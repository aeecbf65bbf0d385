"""--precision: bf16 autocast for the model's forward (on CPU too), float32 losses, and its refusals."""

import json
import platform
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import trainer.config
from rtpulse.cli import app
from rtpulse.errors import RtpulseError
from trainer.config import TrainConfig
from trainer.data import Batch
from trainer.train import build_model, compute_loss, resume_config


def _loss_and_grads(cfg: TrainConfig, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    model = build_model(cfg)
    loss, _ = compute_loss(model, batch, cfg)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("method", ["pu", "pn"])
def test_bf16_runs_the_model_in_bf16_and_keeps_loss_and_gradient(tmp_path, method):
    g = torch.Generator().manual_seed(0)
    u, p = torch.randn(2, 4000, generator=g), torch.randn(2, 4000, generator=g)
    batch = Batch(u=u, p=p) if method == "pu" else Batch(u=u, clean=0.5 * u)
    base = {"out": str(tmp_path / "r"), "clean": "c", "noise": "n", "method": method, "dropout": 0.0,
            "init": "he", "device": "cpu"}
    loss32, grad32 = _loss_and_grads(TrainConfig(**base, precision="fp32"), batch)
    loss_auto, _ = _loss_and_grads(TrainConfig(**base), batch)  # auto on a CPU tensor: float32, bit for bit
    loss16, grad16 = _loss_and_grads(TrainConfig(**base, precision="bf16"), batch)
    assert loss16.dtype == torch.float32  # losses are float32 under autocast
    assert torch.equal(loss_auto, loss32)
    rel = abs(loss16 - loss32) / abs(loss32)
    assert 0 < rel < 0.02  # not equal: the convolutions really ran in bf16 (8-bit mantissa); close: nothing broke
    cos = torch.nn.functional.cosine_similarity(grad16, grad32, dim=0)
    assert cos > 0.98, cos


def test_precision_is_checked_before_any_audio_and_bf16_needs_a_native_cpu(tmp_path, monkeypatch):
    with pytest.raises(RtpulseError, match="--precision must be auto, fp32 or bf16"):
        TrainConfig(out=str(tmp_path / "r"), clean="c", noise="n", precision="fp16").validate()
    monkeypatch.setattr(trainer.config, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(RtpulseError, match="this CPU has no native bf16"):
        TrainConfig(out=str(tmp_path / "r"), clean="c", noise="n", device="cpu", precision="bf16").validate()
    TrainConfig(out=str(tmp_path / "r"), clean="c", noise="n", device="cpu", precision="fp32").validate()
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r2"), "--clean", "c", "--noise", "n",
                                   "--device", "cpu", "--precision", "bf16"])
    assert res.exit_code == 1 and "this CPU has no native bf16" in res.output and "Traceback" not in res.output


def test_resume_takes_a_new_precision_and_an_old_config_without_one_is_auto(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"out": "r", "clean": "c", "noise": "n"}))  # before --precision
    assert resume_config(run).precision == "auto"
    assert resume_config(run, precision="bf16").precision == "bf16"
    (run / "config.json").write_text(json.dumps({"out": "r", "clean": "c", "noise": "n", "precision": "bf16"}))
    assert resume_config(run).precision == "bf16"
    assert resume_config(run, precision="fp32").precision == "fp32"


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64", reason="reads x86 /proc/cpuinfo")
def test_native_bf16_is_what_the_cpu_flags_say():
    flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split()
    # AVX512 alone is not enough: oneDNN then emulates bf16 at half fp32's speed
    assert trainer.config.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_tile" in flags)


def test_a_missing_probe_means_no_native_bf16(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.setattr(trainer.config.Path, "read_text", lambda self: "")  # nor any /proc/cpuinfo flag
    assert trainer.config.cpu_has_native_bf16() is False
