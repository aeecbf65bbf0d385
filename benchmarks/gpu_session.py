"""One device call: the comparison table's rows and two candidates for the default model, side by side on one GPU.

A session lent a GPU has about 15 minutes of device time in all, one command runs at most 10 minutes, and at most
8 files come back from it. So everything trains at once, each run on the same time budget (``--minutes``: the
epochs that fit), and the results come back as one tar file:

    python -m benchmarks.gpu_pack --data ../shared/data --out .data/gpu     # here: ~55 MiB of data and wheels
    # device tool: carry [".data/gpu"], timeout_s 600, kind nvidia-h200 (the ten runs hold ~70 GiB of GPU memory
    # between them, counted from their saved activations on a CPU: too close to an H100's 79), command:
    #   python3 -m benchmarks.gpu_session --pack .data/gpu --out $OUT --minutes 5
    tar xf gpu_session.tar      # here: table/ (rows, commands, dev curves), ship-*/ (the candidates), logs/

Decoding (once, on every core) and each run's test-set scoring come on top of the budget: about 2 minutes. The
candidates are the shipped recipe (`paper`, frequency input, L = 2, P-vs-U loss, mixed P bins) continued from the
shipped weights and trained from scratch; score them here with ``rtpulse bench quality -m …``.
Runs that fail leave their log; the rest still come back. Runs still going at ``--stop-after`` minutes (8.5: a call
ends at 10) are stopped, keeping their last finished epoch, and everything is packed all the same.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from rtpulse.files import temp_beside

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "rtpulse" / "weights" / "default.safetensors"
# the shipped recipe (README model card, sessions 15–17) at GPU batch size; data and budget flags are added per run
SHIP_RECIPE = [
    "--method", "pu", "--preset", "paper", "--freq-input", "--lookahead", "2", "--compress", "linear", "--dropout", "0",
    "--level-frames", "125", "--dev-count", "40", "--dev-seconds", "4", "--crop-seconds", "2.0", "--batch-size", "32",
    "--warmup-steps", "100", "--lr-schedule", "cosine", "--clip-grad", "1", "--init", "he", "--p-level", "mixed",
    "--p-mix-margin-db", "3", "--prior", "0.7", "--risk", "pvu", "--steps-per-epoch", "100", "--select-mask", "soft",
]
CANDIDATES = {  # name → flags on top of SHIP_RECIPE
    "ship-continued": ["--lr", "1e-4", "--seed", "23", "--init-from", str(SHIPPED)],
    "ship-scratch": ["--lr", "3e-4", "--seed", "24"],
}
KEEP = ("metrics.jsonl", "config.json", "training.png", "best.safetensors", "last.safetensors", "table_row.json")


def warm_cache(data: Path) -> int:
    """Decode every audio file under ``data`` into the trainer's cache, on every core (run in a child process)."""
    from concurrent.futures import ProcessPoolExecutor

    from rtpulse.audio import find_audio_files
    from trainer.data import decode_cached, default_cache_dir

    files = find_audio_files(data)
    cache = default_cache_dir()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(decode_cached, files, [cache] * len(files), chunksize=8))
    return len(files)


def child_env(site: Path | None) -> dict:
    """The children's environment: the pack's wheels (soundfile) first on the path, one thread each (the GPU
    does the work; sixteen threads in each of ten processes would fight over the cores)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # ten processes share one GPU, each keeping its peak in PyTorch's cache: less of it lost to fragmentation
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    paths = ([str(site)] if site else []) + [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _imports_soundfile(env: dict | None = None) -> bool:
    return subprocess.run([sys.executable, "-c", "import soundfile"], check=False, capture_output=True,
                          env=env).returncode == 0


def install_wheels(pack: Path, site: Path) -> Path | None:
    """soundfile from the pack's wheels when this Python lacks it (the device image does); None when not needed.
    The pack holds cffi for several Pythons: pip picks, by name, the one this Python can load (given every file,
    it refuses them all for one that does not fit)."""
    if _imports_soundfile():
        return None
    wheels = sorted((pack / "wheels").glob("*.whl"))
    if not wheels:
        sys.exit(f"error: this Python has no soundfile and {pack / 'wheels'} holds no wheels (make the pack with "
                 "python -m benchmarks.gpu_pack)")
    names = sorted({w.name.split("-")[0] for w in wheels})
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-cache-dir",
                           "--find-links", str(pack / "wheels"), "--target", str(site), *names], check=False)
    if done.returncode != 0 or not _imports_soundfile(child_env(site)):  # before ten runs fail on it, one line
        sys.exit(f"error: soundfile from {pack / 'wheels'} does not install or import in Python "
                 f"{sys.version.split()[0]} (pip exit {done.returncode}); make the pack with this Python's version")
    return site


def commands(data: Path, work: Path, minutes: float, device: str, rows: list[str], table_args: list[str],
             ship_args: list[str], candidates: list[str]) -> dict[str, list[str]]:
    """name → argv of each run: one `bench training --only ROW` per row (all into one table folder, as `--only`
    allows), one `train` per candidate."""
    cli = [sys.executable, "-m", "rtpulse.cli"]
    budget = ["--minutes", f"{minutes:g}", "--device", device]
    out = {row: [*cli, "bench", "training", "--data", str(data), "--out", str(work / "table"), "--only", row,
                 *budget, *table_args] for row in rows}
    for name in candidates:
        out[name] = [*cli, "train", "--out", str(work / name), *SHIP_RECIPE, *CANDIDATES[name],
                     "--clean", str(data / "speech" / "train"), "--noise", str(data / "noise" / "train"),
                     "--val-clean", str(data / "speech" / "dev"), "--val-noise", str(data / "noise" / "dev"),
                     *budget, *ship_args]
    return out


STOPPED = "stopped at the deadline"
# each run in a process group of its own (killpg stops it with its children), in this session: a new session
# would outlive a call that ends early on the device, and hold the GPU against a second try on a warm machine
OWN_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


def run_all(runs: dict[str, list[str]], logs: Path, env: dict, deadline: float) -> dict[str, int | str]:
    """Start every run at once and wait for all until ``deadline`` (time.monotonic()); a run still going then is
    stopped (SIGTERM, then SIGKILL) with its children (a table row is `bench training`, which runs `rtpulse train`
    as its child), so that what the others made still comes back. name → exit code or STOPPED."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name, argv in runs.items():
        with open(logs / f"{name}.log", "w") as log:
            log.write(" ".join(argv) + "\n")
            log.flush()
            procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env=env, cwd=REPO, **OWN_GROUP)
    codes: dict[str, int | str] = {}
    for name, p in procs.items():
        try:
            codes[name] = p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            codes[name] = STOPPED
    late = [procs[name] for name, code in codes.items() if code == STOPPED]
    # all at once, and the group: a run keeps its last finished epoch (best.safetensors from the first one on)
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        for p in late:
            _killpg(p.pid, sig)
        until = time.monotonic() + grace
        for p in late:
            try:
                p.wait(timeout=max(0.0, until - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    return codes


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def pack_results(work: Path, tar_path: Path) -> list[str]:
    """The small files a session needs (no optimizer states, no decoded audio) → one tar, written atomically."""
    names = []
    for path in sorted(work.rglob("*")):
        rel = path.relative_to(work)
        if path.is_file() and not {"ckpt", "site"} & set(rel.parts) and (
            rel.parts[0] == "logs" or path.name in KEEP or rel.parts[:2] in (("table", "rows"),)
            or (rel.parts[0] == "table" and len(rel.parts) == 2)
        ):
            names.append(str(rel))
    tmp = temp_beside(tar_path, ".tar")
    with tarfile.open(tmp, "w") as tar:
        for name in names:
            tar.add(work / name, arcname=name)
    os.replace(tmp, tar_path)
    return names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pack", type=Path, default=Path(".data/gpu"), help="the pack of benchmarks.gpu_pack")
    p.add_argument("--data", type=Path, default=None, help="data root (default: PACK/data)")
    p.add_argument("--out", type=Path, required=True, help="where gpu_session.tar and the summary go ($OUT)")
    p.add_argument("--work", type=Path, default=None,
                   help="the runs' folder, new or empty (default: a new folder in the temp directory: a rerun on a "
                        "warm machine starts afresh)")
    p.add_argument("--minutes", type=float, default=5.0, help="each run's time budget for its steps")
    p.add_argument("--stop-after", type=float, default=8.5,
                   help="minutes from the start after which runs still going are stopped and the rest packed (a "
                        "device call ends at 10)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--rows", default=None, help="comma-separated table rows (default: all)")
    p.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated; '' for none")
    p.add_argument("--table-arg", action="append", default=[], help="extra `bench training` argument (repeatable)")
    p.add_argument("--ship-arg", action="append", default=[], help="extra `train` argument for the candidates")
    p.add_argument("--warm-cache", type=Path, default=None, help=argparse.SUPPRESS)  # the child's entry
    args = p.parse_args()
    if args.warm_cache is not None:
        print(f"decoded {warm_cache(args.warm_cache)} files", flush=True)
        return
    from benchmarks.training_table import ROWS

    rows = list(ROWS) if args.rows is None else [r for r in args.rows.split(",") if r]
    candidates = [c for c in args.candidates.split(",") if c]
    for name, known in [*((r, ROWS) for r in rows), *((c, CANDIDATES) for c in candidates)]:
        if name not in known:
            p.error(f"unknown run {name!r}; known: {', '.join(known)}")
    if not (args.minutes > 0 and args.stop_after > 0):
        p.error("--minutes and --stop-after must be above 0")
    data = args.data or args.pack / "data"
    if not (data / "speech" / "train").is_dir():
        p.error(f"no {data / 'speech' / 'train'}: give --pack (benchmarks.gpu_pack's output) or --data")
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="gpu_session-"))
    elif args.work.exists() and any(args.work.iterdir()):  # its runs would refuse to start over, its files be packed
        p.error(f"--work {args.work} is not empty: give a new folder")
    args.out.mkdir(parents=True, exist_ok=True)
    t0, deadline = time.time(), time.monotonic() + args.stop_after * 60
    env = child_env(install_wheels(args.pack, args.work / "site"))
    codes: dict[str, int | str] = {}
    try:
        # only a head start (each run decodes what it misses): a failure or a hang here must not cost the call
        try:
            codes["decode"] = subprocess.run(
                [sys.executable, "-m", "benchmarks.gpu_session", "--out", str(args.out), "--warm-cache", str(data)],
                env=dict(env, OMP_NUM_THREADS="1"), cwd=REPO, check=False,
                timeout=max(1.0, deadline - time.monotonic() - 60 * args.minutes)).returncode
        except subprocess.TimeoutExpired:
            codes["decode"] = STOPPED
        print(f"cache warm after {time.time() - t0:.0f} s; starting {len(rows)} rows and {len(candidates)} "
              f"candidates, {args.minutes:g} min each", flush=True)
        runs = commands(data.resolve(), args.work, args.minutes, args.device, rows, args.table_arg, args.ship_arg,
                        candidates)
        codes.update(run_all(runs, args.work / "logs", env, deadline))
        if rows and all(codes[r] == 0 for r in rows):  # every row file exists: one more call writes the whole table
            i = runs[rows[0]].index("--only")  # …of these rows only (without --only it would train every other row)
            table = runs[rows[0]][:i] + [a for r in rows for a in ("--only", r)] + runs[rows[0]][i + 2 :]
            try:  # after the deadline too: bounded, so that the tar is written before the call ends
                codes["table"] = subprocess.run(table, check=False, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                                timeout=max(45.0, deadline - time.monotonic())).returncode
            except subprocess.TimeoutExpired:
                codes["table"] = STOPPED
    finally:  # whatever happened above, what there is comes back
        names = pack_results(args.work, args.out / "gpu_session.tar")
    summary = "\n".join(f"{name}: exit {code}" for name, code in codes.items())
    print(f"{summary}\n{len(names)} files in {args.out / 'gpu_session.tar'} after {time.time() - t0:.0f} s", flush=True)
    table_md = args.work / "table" / "training_table.md"
    if table_md.is_file():
        print(table_md.read_text(), flush=True)
    if any(code != 0 for code in codes.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
