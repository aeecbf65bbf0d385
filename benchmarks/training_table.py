"""The issue's comparison table: PU (`paper`, L = 8 and L = 0), PN, MixIT, the unweighted and uPU ablations,
both `compress` choices — each row one `rtpulse train` run from a shared recipe, scored on the quality
benchmark's test set (dev split, unseen speakers and noise recordings, −26 dBFS, SNR U[−5, 10] dB).

Rows run one after another as subprocesses (the command in the table is the command that ran); a row
whose result file exists is not run again, so a killed table resumes, and `--only` splits the rows over
several shells or machines that write into the same folder.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks.latency import _save_fig, have_matplotlib
from benchmarks.quality import MIN_SPEECH_S, REFERENCE_FLOOR_DB, generated_set
from rtpulse.errors import RtpulseError
from rtpulse.files import discard, write_text_atomic
from rtpulse.model import ModelConfig, load_model
from trainer.evaluate import EvalOptions, score

# name → (what it is, the row's flags on top of the shared recipe; all rows use the paper preset unless --preset
# overrides it). nnPU rows are the paper's method
# (weighted sigmoid loss); `pvu` is the P-vs-U logistic loss the shipped model was trained with.
ROWS: dict[str, tuple[str, list[str]]] = {
    "pu-paper-L8": ("PU (nnPU), L=8 (non-causal)", ["--method", "pu", "--preset", "paper", "--lookahead", "8"]),
    "pu-paper-L0": ("PU (nnPU), L=0 (causal)", ["--method", "pu", "--preset", "paper", "--lookahead", "0"]),
    "pvu-paper-L0": ("PU (P-vs-U logistic), L=0", ["--method", "pu", "--preset", "paper", "--risk", "pvu"]),
    "pn-paper-L0": ("PN (supervised), L=0", ["--method", "pn", "--preset", "paper"]),
    "mixit-paper-L0": ("MixIT, L=0", ["--method", "mixit", "--preset", "paper"]),
    "pu-unweighted-L0": (
        "PU (nnPU) unweighted (p=0), L=0",
        ["--method", "pu", "--preset", "paper", "--weight-exponent", "0"],
    ),
    "upu-paper-L0": (
        "uPU (no non-negative correction), L=0",
        ["--method", "pu", "--preset", "paper", "--risk", "upu"],
    ),
    "pu-power-L0": (
        "PU (nnPU), compress power (magnitude^(1/15)), L=0",
        ["--method", "pu", "--preset", "paper", "--compress", "power"],
    ),
}


@dataclass
class TableOptions:
    data: Path
    out: Path
    epochs: int = 100
    minutes: float | None = None  # each row's time budget (`rtpulse train --minutes`), `epochs` then the cap
    steps_per_epoch: int = 100
    batch_size: int = 16
    crop_seconds: float = 3.125
    lr: float = 3e-4
    warmup_steps: int = 100
    pvu_steps: int = 0  # P-vs-U warm start before nnPU/uPU (0 = the paper's method from the first step)
    gamma: float = 0.096  # nnPU's correction step: the reference code's default (rtpulse train's is 1)
    # which mask picks each run's best epoch: "reference" = the reference code's (binary for PU rows, the soft sigmoid
    # for PN and MixIT); "soft" or "binary" for every row (the CPU-scale tables of sessions 2 and 15 used soft)
    select_mask: str = "reference"
    preset: str | None = None  # replaces `paper` in every row (e.g. blocks2 on a CPU); L is capped to its maximum
    device: str | None = None
    precision: str = "auto"  # rtpulse train --precision (bf16 on a CPU with native bf16: ~2× the clips/s)
    cache: Path | None = None  # decoded-audio cache (default: the trainer's, ~/.cache/rtpulse)
    only: list[str] = field(default_factory=list)
    count: int = 20  # test set: the quality benchmark's mixtures (same seed → the same files as quality.md)
    seconds: float = 6.0
    seed: int = 0
    min_speech_seconds: float = MIN_SPEECH_S
    reference_floor_db: float = REFERENCE_FLOOR_DB
    dev_count: int = 40  # the trainer's own dev set, which picks each run's best checkpoint
    dev_seconds: float = 4.0


def row_args(name: str, opts: TableOptions) -> list[str]:
    """The `rtpulse train` arguments of one row: shared recipe + the row's flags (+ the preset override)."""
    flags = list(ROWS[name][1])
    if opts.preset is not None:
        flags[flags.index("--preset") + 1] = opts.preset
    preset = flags[flags.index("--preset") + 1]
    if "--lookahead" in flags:  # cap L to what the (overridden) preset has
        i = flags.index("--lookahead") + 1
        flags[i] = str(min(int(flags[i]), ModelConfig(preset=preset).max_lookahead))
    d = opts.data
    shared = {
        "--out": opts.out / "runs" / name,
        "--clean": d / "speech" / "train",
        "--noise": d / "noise" / "train",
        "--val-clean": d / "speech" / "dev",
        "--val-noise": d / "noise" / "dev",
        "--dev-count": opts.dev_count,
        "--dev-seconds": opts.dev_seconds,
        "--epochs": opts.epochs,
        **({} if opts.minutes is None else {"--minutes": opts.minutes}),
        "--steps-per-epoch": opts.steps_per_epoch,
        "--batch-size": opts.batch_size,
        "--crop-seconds": opts.crop_seconds,
        "--lr": opts.lr,
        "--warmup-steps": opts.warmup_steps,
        "--lr-schedule": "cosine",
        "--clip-grad": 1,
        "--init": "he",
        "--dropout": 0,
        "--level-frames": 125,
        "--seed": opts.seed,
    }
    if "--compress" not in flags:
        shared["--compress"] = "linear"
    pu = flags[flags.index("--method") + 1] == "pu"
    reference_mask = "binary" if pu else "soft"
    shared["--select-mask"] = reference_mask if opts.select_mask == "reference" else opts.select_mask
    if pu:  # the PU loss's options: `rtpulse train` refuses them for PN and MixIT
        shared["--p-level"], shared["--prior"] = "matched", 0.7
    if pu and "--risk" not in flags:  # γ acts in nnPU's correction only (the pvu and uPU rows have none)
        shared["--gamma"] = opts.gamma
    if opts.pvu_steps and pu and "pvu" not in flags:
        shared["--pvu-steps"] = opts.pvu_steps
    if opts.device:
        shared["--device"] = opts.device
    if opts.precision != "auto":
        shared["--precision"] = opts.precision
    if opts.cache:
        shared["--cache"] = opts.cache
    return flags + [str(x) for kv in shared.items() for x in kv]


def check_options(opts: TableOptions) -> None:
    """The shared recipe, checked as `rtpulse train` checks it, before the test set is built: a bad value would
    otherwise fail late, in each row's own process."""
    from trainer.config import TrainConfig

    d = opts.data
    TrainConfig(out=str(opts.out / "runs" / "check"), clean=str(d / "speech" / "train"), noise=str(d / "noise" / "train"),
                preset=opts.preset or "paper", epochs=opts.epochs, minutes=opts.minutes, steps_per_epoch=opts.steps_per_epoch,
                batch_size=opts.batch_size, crop_seconds=opts.crop_seconds, lr=opts.lr, warmup_steps=opts.warmup_steps,
                pvu_steps=opts.pvu_steps, dev_count=opts.dev_count, dev_seconds=opts.dev_seconds, seed=opts.seed,
                device=opts.device, precision=opts.precision, gamma=opts.gamma).validate()
    if opts.select_mask not in ("reference", "soft", "binary"):
        raise RtpulseError(f"--select-mask must be reference, soft or binary, got {opts.select_mask!r}")
    for part in ("speech/train", "noise/train", "speech/dev", "noise/dev"):  # else each row fails on its own, late
        if not (d / part).is_dir():
            raise RtpulseError(f"no {d / part}: --data needs speech/train, noise/train, speech/dev and noise/dev")


MACHINE_OPTIONS = ("--device", "--precision", "--cache", "--out")  # where a row runs, not what it trains


def recipe(name: str, opts: TableOptions) -> list[str]:
    """The row's `rtpulse train` arguments without the machine's: what a finished or interrupted row must match
    (the data folder resolved: `data` and `/abs/data` are one recipe)."""
    args = row_args(name, dataclasses.replace(opts, data=Path(opts.data).resolve()))
    drop = {i + k for i, a in enumerate(args) if a in MACHINE_OPTIONS for k in (0, 1)}
    return [a for i, a in enumerate(args) if i not in drop]


DATA_OPTIONS = ("--clean", "--noise", "--val-clean", "--val-noise")  # paths: a command may name them relatively


def _options(args: list[str]) -> dict[str, str]:
    """``--key value`` pairs (a key without a value maps to ""), in order."""
    out, i = {}, 0
    while i < len(args):
        if args[i].startswith("--"):
            has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
            out[args[i]] = args[i + 1] if has_value else ""
            i += 2 if has_value else 1
        else:
            i += 1
    return out


def _default_of(name: str) -> object | None:
    """The trainer's default for a valued option; None for flags, for options without one, and for `epochs` (its
    default depends on --minutes: 10 alone, 10,000 as the cap of a budget)."""
    from trainer.config import TrainConfig

    default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}.get(name)
    return None if isinstance(default, bool) or name == "epochs" else default


def _as_trained(options: dict[str, str]) -> dict[str, str]:
    """The options as the trainer took them: one equal to its default is left out (an old row's command without
    --gamma trained with γ = 1, as a new one saying --gamma 1.0), and so are PU options of a PN or MixIT row (the
    trainer ignored them before it refused them)."""
    from trainer.config import PU_ONLY

    pu = options.get("--method", _default_of("method")) == "pu"
    out = {}
    for key, value in options.items():
        name = key[2:].replace("-", "_")
        if name in PU_ONLY and not pu:
            continue
        default = _default_of(name)
        if default is not None and _canonical(value) == _canonical(str(default)):
            continue
        out[key] = value
    return out


def _said(key: str, options: dict[str, str]) -> str:
    if key in options:
        return f"{key} {options[key]}".strip()
    default = _default_of(key[2:].replace("-", "_"))
    return f"no {key}" if default is None else f"{key} {default} (the default)"


def _canonical(value: str | None) -> str | None:
    """A number in one spelling ("1", "1.0", "1e0"); anything else as given."""
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return value


def check_recipe(name: str, then: list[str] | None, now: list[str], where: Path, command: str | None = None) -> None:
    """A row trained with other settings is refused, not reported under these, option by option. A row from before
    recipes were recorded is checked against the command that trained it (its data paths aside); one resumed from
    such a row has no command to tell, and passes."""
    if then is None:
        args = shlex.split(command or "")[2:]  # "rtpulse train ..."
        if not args or "--resume" in args:
            return
        drop = set(MACHINE_OPTIONS) | set(DATA_OPTIONS)
        old = {k: v for k, v in _options(args).items() if k not in drop}
        new = {k: v for k, v in _options(now).items() if k not in drop}
    else:
        old, new = _options(then), _options(now)
    old_set, new_set = _as_trained(old), _as_trained(new)
    for key in [*new, *(k for k in old if k not in new)]:
        if _canonical(old_set.get(key)) != _canonical(new_set.get(key)):
            was, is_ = _said(key, old), _said(key, new)
            raise RtpulseError(f"row {name} in {where} was trained with '{was}', not '{is_}': give a new --out, or "
                               f"delete {where / 'rows' / (name + '.json')} and {where / 'runs' / name} to train it again")


def _train(name: str, opts: TableOptions) -> str:
    """Train one row (or continue it where a killed table left it); returns the command that trained it."""
    run_dir = opts.out / "runs" / name
    args = ["train", *row_args(name, opts)]
    mark = run_dir / "table_row.json"
    interrupted = any((run_dir / "ckpt").glob("epoch-*.state.pt"))
    if not interrupted:  # a fresh start: the trainer accepts this file in its folder (it is none of its own)
        write_text_atomic(mark, json.dumps({"recipe": recipe(name, opts)}, indent=1))
    elif mark.is_file():  # a row from before recipes were recorded has none to check, and gets none written
        check_recipe(name, json.loads(mark.read_text()).get("recipe"), recipe(name, opts), opts.out)
    # an interrupted row continues with its own recipe (a finished one, killed while it was scored, has nothing
    # left to train: `rtpulse train --resume` says so and exits 0)…
    if interrupted:
        args = ["train", "--resume", str(run_dir)]
        if opts.device:  # …on this machine
            args += ["--device", opts.device]
        if opts.precision != "auto":
            args += ["--precision", opts.precision]
    # else a fresh start; the trainer itself restarts a run killed in its first epoch and refuses other files there
    proc = subprocess.run([sys.executable, "-m", "rtpulse.cli", *args], check=False)
    if proc.returncode != 0:
        raise RtpulseError(f"row {name}: rtpulse train exited with {proc.returncode}")
    return json.loads((run_dir / "config.json").read_text())["command"]  # what ran, also after a resume


def _cost(run_dir: Path) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    seconds = sum(r.get("train_seconds", 0.0) for r in rows)
    return {
        "epochs": len(rows),
        "steps": rows[-1]["step"] if rows else 0,
        "train_seconds": seconds,
        # the row's clips over its seconds: a plain mean of the epochs' rates counts a fast epoch's second as much as a
        # slow one's whole epoch (2.96 where 2.77 clips/s ran, on a shared machine)
        "clips_per_s": (sum(r["clips_per_s"] * r.get("train_seconds", 0.0) for r in rows) / seconds if seconds
                        else float(np.mean([r["clips_per_s"] for r in rows])) if rows else 0.0),
        "best_epoch": rows[-1].get("best_epoch") if rows else None,
    }


def score_model(path: Path, items) -> dict:
    """Mean SI-SNRi / PESQ-WB / STOI of one model file, soft and binary mask, offline engine."""
    model = load_model(path).eval()
    out = {}
    for mask in ("soft", "binary"):
        rows = [score(model, it.noisy, it.clean, EvalOptions(mask=mask)) for it in items]  # `rtpulse eval`'s scoring
        keys = ("si_snri", "pesq_wb", "stoi")
        out[mask] = {k: float(np.mean([r[k] for r in rows if r.get(k) is not None])) for k in keys
                     if any(r.get(k) is not None for r in rows)}
        # PESQ refuses some files (too short, silent output): a mean over fewer says so in its cell
        out[mask]["files"] = {k: sum(r.get(k) is not None for r in rows) for k in keys}
    return out


def _cell(scores: dict, key: str, digits: int, count: int) -> str:
    value = f"{scores.get(key, float('nan')):.{digits}f}"
    n = scores.get("files", {}).get(key, count)
    return value if n == count else f"{value} (n {n} of {count})"


def run_table(opts: TableOptions) -> dict:
    names = opts.only or list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise RtpulseError(f"unknown row {unknown[0]!r}; rows: {', '.join(ROWS)}")
    check_options(opts)
    items = generated_set(
        opts.data, opts.count, opts.seconds, opts.seed, opts.min_speech_seconds, reference_floor_db=opts.reference_floor_db
    )
    test_set = {"count": opts.count, "seconds": opts.seconds, "seed": opts.seed, "data": str(Path(opts.data).resolve()),
                "reference_floor_db": opts.reference_floor_db, "min_speech_seconds": opts.min_speech_seconds}
    (opts.out / "rows").mkdir(parents=True, exist_ok=True)
    for name in names:
        done = opts.out / "rows" / f"{name}.json"
        run_dir = opts.out / "runs" / name
        if done.exists():
            row = read_row(done)
            check_recipe(name, row.get("recipe"), recipe(name, opts), opts.out, row.get("command"))
            if row.get("test_set") != test_set:  # finished under another test set: re-score, do not retrain
                row.update(scores=score_model(run_dir / "best.safetensors", items), test_set=test_set)
                write_text_atomic(done, json.dumps(row, indent=1))
            continue
        command = _train(name, opts)
        row = {
            "name": name,
            "what": ROWS[name][0],
            "command": command,
            "recipe": recipe(name, opts),
            "model": load_model(run_dir / "best.safetensors").config.to_json(),
            "device": opts.device or ("cuda" if torch.cuda.is_available() else "cpu"),
            **_cost(run_dir),
            "scores": score_model(run_dir / "best.safetensors", items),
            "test_set": test_set,
        }
        write_text_atomic(done, json.dumps(row, indent=1))
    return write_table(opts.out, test_set, opts)


def read_row(path: Path) -> dict:
    """A finished row's record, or a one-line error (deleting it re-trains nothing: the row's run is kept)."""
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RtpulseError(f"{path} is not a readable row record ({e}); delete it and the row is scored again "
                           "from its run") from None
    if not isinstance(row, dict) or not {"name", "scores"} <= row.keys():
        raise RtpulseError(f"{path} is not a row record of this table; delete it and the row is scored again")
    return row


def write_table(out: Path, test_set: dict, opts: TableOptions) -> dict:
    """Table of every finished row in ``out/rows`` → training_table.md/.json (+ .png); a row another call trained
    with other shared settings (`--only` into the same folder) is marked ‡, not passed off as this recipe's."""
    rows = [read_row(p) for p in sorted((out / "rows").glob("*.json"))]
    for r in rows:  # the dev curve at the kept epoch and at the last: does the method hold its best or drift away?
        metrics = out / "runs" / r["name"] / "metrics.jsonl"
        if metrics.exists():
            dev = [json.loads(x)["dev_sisnri_soft"] for x in metrics.read_text().splitlines() if x.strip()]
            kept = r.get("best_epoch") or 1 + int(np.argmax(dev))
            r["dev_soft"] = {"best": dev[kept - 1], "best_epoch": kept, "last": dev[-1], "peak": max(dev)}
    order = {n: i for i, n in enumerate(ROWS)}
    rows.sort(key=lambda r: order.get(r["name"], len(order)))
    result = {"test_set": test_set, "rows": rows}
    lines = [
        f"Training table — test set: {test_set['count']} dev-split mixtures ≤ {test_set['seconds']:g} s, seed "
        + f"{test_set['seed']}, references with a noise floor ≤ {test_set.get('reference_floor_db', 0):g} dB, −26 dBFS, "
        + "SNR U[−5, 10] dB (as `rtpulse bench quality`); each run's best epoch by the dev SI-SNRi of the mask its "
        + "command's --select-mask names; † = scored on "
        + "another test set (a row not re-run under these settings); ‡ = trained with other shared settings than "
        + "the last call's (see its command)",
        "",
        "| row | model | SI-SNRi soft / binary dB | PESQ-WB soft | STOI soft | dev soft: kept (epoch) / last |"
        + " steps | train min | clips/s | device |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cfg = json.loads(r["model"])
        s, b = r["scores"]["soft"], r["scores"]["binary"]
        count = r.get("test_set", test_set).get("count", test_set["count"])
        marks = ("" if r.get("test_set") == test_set else " †") + (" ‡" if _other_recipe(r, opts) else "")
        lines.append(
            f"| {_what(r)}{marks} | {cfg['preset']} L={cfg['lookahead']} {cfg['compress']} | {s['si_snri']:+.2f} / "
            f"{b['si_snri']:+.2f} | {_cell(s, 'pesq_wb', 2, count)} | {_cell(s, 'stoi', 3, count)} | "
            f"{_dev(r)} | "
            f"{r['steps']} | {r['train_seconds'] / 60:.1f} | {r['clips_per_s']:.1f} | {r['device']} |"
        )
    lines += ["", "Commands:", ""] + [f"- {r['name']}: `{r['command']}`" for r in rows]
    write_text_atomic(out / "training_table.md", "\n".join(lines) + "\n")
    write_text_atomic(out / "training_table.json", json.dumps(result, indent=1))
    if rows and have_matplotlib():
        _plot(rows, out / "training_table.png")
    else:
        discard(out / "training_table.png")  # an earlier call's bars beside this table would show rows it does not
    return result


def _other_recipe(row: dict, opts: TableOptions) -> bool:
    if row["name"] not in ROWS:
        return False
    try:
        check_recipe(row["name"], row.get("recipe"), recipe(row["name"], opts), opts.out, row.get("command"))
    except RtpulseError:
        return True
    return False


def _what(row: dict) -> str:
    return ROWS[row["name"]][0] if row["name"] in ROWS else row["what"]


def _dev(row: dict) -> str:
    d = row.get("dev_soft")
    return "—" if d is None else f"{d['best']:+.2f} ({d['best_epoch']}) / {d['last']:+.2f}"


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.5))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["scores"]["soft"]["si_snri"] for r in rows], height=0.4, label="soft mask", color="tab:red")
    ax.barh(y + 0.2, [r["scores"]["binary"]["si_snri"] for r in rows], height=0.4, label="binary mask", color="0.6")
    ax.set_yticks(
        y, [f"{_what(r)}\n{json.loads(r['model'])['preset']} L={json.loads(r['model'])['lookahead']}" for r in rows]
    )
    ax.invert_yaxis()
    ax.axvline(0, color="k", linewidth=0.5)
    ax.set_xlabel("SI-SNRi (dB)")
    ax.legend()
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)
