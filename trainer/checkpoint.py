"""Per-epoch checkpoints: model weights in safetensors (via rtpulse.model), optimizer/step/RNG state in a
tensors-and-primitives file read with ``torch.load(weights_only=True)`` (no pickled code).

Files in RUN_DIR/ckpt: ``epoch-NNNN.safetensors`` + ``epoch-NNNN.state.pt``; the two newest pairs are
kept so a corrupt or half-written latest falls back to the previous one. RUN_DIR/last.safetensors and
best.safetensors are the user-facing model files.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from rtpulse.errors import RtpulseError, short_reason
from rtpulse.files import discard, temp_beside, write_synced
from rtpulse.model import PulseCNN, load_model, save_model

KEEP = 2


def _atomic_torch_save(obj, path: Path) -> None:
    # serialised in memory, written by Python: torch.save to a file turns a full disk into a RuntimeError
    # ("[enforce fail at inline_container.cc] unexpected pos"), which no one-line error path catches
    buf = io.BytesIO()
    torch.save(obj, buf)
    tmp = temp_beside(path)
    try:
        write_synced(tmp, buf.getvalue())
        os.replace(tmp, path)
    except OSError as e:
        raise RtpulseError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        discard(tmp)


def _states_oldest_first(ckpt: Path) -> list[Path]:
    """The state files by epoch number (by name, epoch-10000 would sort before epoch-9999)."""

    def epoch(path: Path) -> int:
        digits = path.name.removeprefix("epoch-").removesuffix(".state.pt")
        return int(digits) if digits.isdigit() else -1

    return sorted(ckpt.glob("epoch-*.state.pt"), key=epoch)


def save_checkpoint(run_dir: Path, model: PulseCNN, state: dict, published: PulseCNN | None = None) -> None:
    """Write epoch ``state['epoch']``: weights and last.safetensors (``published``, else the weights) first, the
    state file last (it marks the epoch complete: a kill before it redoes the epoch on resume, so last.safetensors
    is never left an epoch behind)."""
    ckpt = run_dir / "ckpt"
    ckpt.mkdir(parents=True, exist_ok=True)
    stem = f"epoch-{state['epoch']:04d}"
    save_model(model, ckpt / f"{stem}.safetensors")
    save_model(model if published is None else published, run_dir / "last.safetensors")
    _atomic_torch_save(state, ckpt / f"{stem}.state.pt")
    for old in _states_oldest_first(ckpt)[:-KEEP]:
        old.unlink(missing_ok=True)
        old.with_name(old.name.replace(".state.pt", ".safetensors")).unlink(missing_ok=True)


def load_checkpoint(run_dir: Path, device: torch.device | str = "cpu") -> tuple[PulseCNN, dict]:
    """Newest complete, consistent checkpoint → (model, state). Falls back to older ones."""
    ckpt = run_dir / "ckpt"
    problems = []
    for state_path in reversed(_states_oldest_first(ckpt)):
        weights = state_path.with_name(state_path.name.replace(".state.pt", ".safetensors"))
        try:
            state = torch.load(state_path, map_location=device, weights_only=True)
        except Exception as e:  # noqa: BLE001 — any unreadable state (truncated, corrupt, foreign): try the previous one
            # not torch's own text: it suggests weights_only=False, i.e. running whatever code the file holds
            msg = str(e)
            why = ("it holds more than tensors and plain values" if "Unsupported global" in msg
                   else "damaged: not a saved state" if "weights_only" in msg else short_reason(e))
            problems.append(f"{state_path.name} is not a readable state file ({why})")
            continue
        try:
            model = load_model(weights, device)
        except RtpulseError as e:
            problems.append(str(e))
            continue
        if model.config.extra.get("epoch") != state.get("epoch"):
            problems.append(f"{state_path.name}: weights and state disagree on the epoch")
            continue
        return model, state
    detail = f" ({'; '.join(problems)})" if problems else ""
    raise RtpulseError(f"no usable checkpoint in {ckpt}{detail}")
