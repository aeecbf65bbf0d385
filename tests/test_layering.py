"""Runtime boundaries: denoising never loads training code, benchmarks or PortAudio."""

import subprocess
import sys

import soundfile as sf
from conftest import noisy_signal


def test_runtime_imports_no_trainer_benchmarks_or_sounddevice(tmp_path):
    from conftest import random_model

    from rtpulse.model import save_model

    model = tmp_path / "m.safetensors"
    save_model(random_model(), model)
    src = tmp_path / "in.wav"
    sf.write(src, noisy_signal(0.3), 16000)
    code = f"""
import sys
from typer.testing import CliRunner
from rtpulse.cli import app
r = CliRunner().invoke(app, ["denoise", {str(src)!r}, "-o", {str(tmp_path / 'o.wav')!r}, "-m", {str(model)!r}])
assert r.exit_code == 0, r.output
loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('trainer', 'benchmarks', 'sounddevice'))
print(loaded)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
