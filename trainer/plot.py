"""Training curves as a PNG (matplotlib is optional: the `[train]` extra)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rtpulse.errors import RtpulseError
from rtpulse.files import discard, temp_beside


def plot_metrics(metrics: Path, out: Path) -> str | None:
    """Loss, fraction of U bins called speech and dev SI-SNRi by epoch → ``out``; None if not possible (no
    matplotlib, no epochs). A file that cannot be written is an :class:`RtpulseError` naming ``out``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not metrics.is_file():
        return None
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    if not rows:
        return None
    ep = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(ep, [r["loss"] for r in rows], marker="o", label="loss")
    if "risk_u" in rows[0] and any(r["risk_u"] for r in rows):
        axes[0].plot(ep, [r["risk_p"] for r in rows], marker=".", label="π·R_P⁺")
        axes[0].plot(ep, [r["risk_u"] for r in rows], marker=".", label="R_U⁻ − π·R_P⁻")
    axes[0].set_title("training risk")
    axes[0].legend()
    axes[1].plot(ep, [100 * r["u_speech"] for r in rows], marker="o")
    axes[1].set_title("U bins called speech (%)")
    for key, label in (("dev_sisnri_binary", "binary"), ("dev_sisnri_soft", "soft")):
        if key in rows[0]:
            axes[2].plot(ep, [r.get(key) for r in rows], marker="o", label=label)
    if "val_risk" in rows[0]:
        axes[2].plot(ep, [r["val_risk"] for r in rows], marker="o", label="val nnPU risk")
    axes[2].set_title("validation (SI-SNRi dB)")
    if axes[2].lines:
        axes[2].legend()
    else:  # no held-out files: nothing was validated
        axes[2].text(0.5, 0.5, "no validation data", ha="center", va="center", transform=axes[2].transAxes)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = temp_beside(out, ".png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, out)
    except OSError as e:  # Python's text would name the hidden temp file, not the plot the user looks for
        raise RtpulseError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
        discard(tmp)
    return str(out)
