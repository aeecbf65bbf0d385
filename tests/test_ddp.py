"""Two CPU processes (gloo) on half a batch each = one process on the whole batch (PN loss, the PU P-vs-U loss
with every tracker option, whose model calls go through the DDP wrapper, and nnPU, whose correction must be decided on
the whole batch; no dropout)."""

import dataclasses
import socket

import pytest
import torch
import torch.multiprocessing as mp

from trainer.config import TrainConfig
from trainer.data import Batch
from trainer.ddp import Dist, check_rank_device, init_distributed, rank_seed
from trainer.train import build_model, compute_loss, train_step

CFG = TrainConfig(out="unused", method="pn", clean="c", noise="n", dropout=0.0, seed=3)
# P-vs-U is a mean over U bins plus a mean over P bins: halves of equal size average to the whole batch's loss
PU_CFG = dataclasses.replace(CFG, method="pu", risk="pvu", level_frames=8, floor_frames=6, p_gain="u",
                             context_seconds=0.032, init="he")
NNPU_CFG = dataclasses.replace(PU_CFG, risk="nnpu", prior=0.9)


def fixed_batch(cfg: TrainConfig = CFG) -> Batch:
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(4, 2048, generator=g)
    noisy = clean + torch.randn(4, 2048, generator=g)
    if cfg.method == "pu" and cfg.risk == "nnpu":  # P clips louder on rank 1's half: the halves' R_U^- − π R_P^- differ in sign
        return Batch(u=2 * noisy, p=torch.randn(4, 2048, generator=g) * torch.tensor([[2.0], [2.0], [6.0], [6.0]]))
    if cfg.method == "pu":
        return Batch(u=noisy, p=0.5 * torch.randn(4, 2048, generator=g))
    return Batch(u=noisy, clean=clean)


def half_batch(batch: Batch, rank: int) -> Batch:
    return Batch(**{k: None if v is None else v[2 * rank : 2 * rank + 2] for k, v in vars(batch).items()})


def one_step(model, batch: Batch, d: Dist, cfg: TrainConfig = CFG):
    net = d.wrap(model)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)  # SGD: the update is proportional to the gradient
    train_step(net, opt, batch, cfg)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, port: int, out: str, cfg: TrainConfig) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    d = init_distributed("cpu")
    try:
        params = one_step(build_model(cfg), half_batch(fixed_batch(cfg), rank), d, cfg)
        if d.main:
            torch.save(params, out)
    finally:
        d.close()
    _exit_now()


def _exit_now() -> None:
    """End a worker whose results are written. After a DDP step gloo's threads outlive destroy_process_group and die
    in interpreter shutdown; a peer already gone can then make one abort (SIGABRT, seen once under load)."""
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("cfg", [CFG, PU_CFG, NNPU_CFG], ids=["pn", "pu-trackers", "nnpu"])
def test_two_process_ddp_step_equals_one_process_on_the_combined_batch(tmp_path, cfg):
    if cfg is NNPU_CFG:  # the case only tests something if rank 0 alone would not correct and the whole batch does
        model = build_model(cfg)
        whole, rank0 = (compute_loss(model, b, cfg)[1]["risk_u"] for b in (fixed_batch(cfg), half_batch(fixed_batch(cfg), 0)))
        assert whole < 0 < rank0
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(_free_port(), str(out), cfg), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    single = one_step(build_model(cfg), fixed_batch(cfg), Dist(), cfg)
    half_only = one_step(build_model(cfg), half_batch(fixed_batch(cfg), 0), Dist(), cfg)
    for k in single:
        # summation order differs with the thread count: ~2e-6 seen with one thread per process
        torch.testing.assert_close(ddp[k], single[k], atol=1e-5, rtol=1e-4)
    # the check can fail: rank 0's half batch alone gives parameters far outside that tolerance
    assert max(float((half_only[k] - single[k]).abs().max()) for k in single) > 1e-3


def test_single_process_helpers_are_no_ops():
    d = Dist()
    model = torch.nn.Linear(2, 2)
    t = torch.tensor([1.0, 2.0])
    assert d.wrap(model) is model and d.mean(t) is t and d.main
    d.barrier()
    d.close()


def test_a_gpu_index_under_torchrun_is_refused_since_every_rank_would_take_it(monkeypatch):
    from rtpulse.errors import RtpulseError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(RtpulseError, match="under torchrun give --device cuda .each rank takes the GPU of its LOCAL_RANK"):
        init_distributed("cuda:0")
    for fine in (None, "", "auto", "cuda", "cpu"):  # the default (auto) too: each rank takes cuda:LOCAL_RANK
        check_rank_device(fine, 2)
    check_rank_device("cuda:1", 1)  # one process may name its GPU


def test_each_rank_and_epoch_gets_its_own_stream():
    seeds = {rank_seed(0, e, r) for e in range(1, 4) for r in range(4)}
    assert len(seeds) == 12 and rank_seed(1, 1, 0) not in seeds  # the run's seed matters too


def _train_worker(rank: int, port: int, args: list[str], out_dir: str) -> None:
    import os

    from typer.testing import CliRunner

    from rtpulse.cli import app

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import trainer.loop

    seeds = []  # the ranks the loop asks rank_seed for: each rank must draw its own batches
    trainer.loop.rank_seed = lambda seed, epoch, r: seeds.append(r) or rank_seed(seed, epoch, r)
    res = CliRunner().invoke(app, ["train", *args])
    with open(f"{out_dir}/rank{rank}.txt", "w") as f:
        f.write(f"{res.exit_code}\n{res.output}")
    with open(f"{out_dir}/seeds{rank}.txt", "w") as f:
        f.write(" ".join(map(str, seeds)))
    _exit_now()


def test_two_rank_training_run_writes_once_and_only_rank_0_reports(tmp_path):
    import json

    from conftest import write_tiny_corpus

    write_tiny_corpus(tmp_path)
    run = tmp_path / "run"
    args = ["--out", str(run), "--clean", str(tmp_path / "clean"), "--noise", str(tmp_path / "noise"),
            "--cache", str(tmp_path / "cache"), "--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "2",
            "--crop-seconds", "0.1", "--dev-count", "2", "--dev-seconds", "0.25", "--dev-fraction", "0.34",
            "--device", "cpu", "--method", "pu", "--risk", "pvu"]
    mp.spawn(_train_worker, args=(_free_port(), args, str(tmp_path)), nprocs=2, join=True)
    code0, out0 = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    code1, out1 = (tmp_path / "rank1.txt").read_text().split("\n", 1)
    assert (code0, code1) == ("0", "0"), out0 + out1
    assert [(tmp_path / f"seeds{r}.txt").read_text() for r in (0, 1)] == ["0 0", "1 1"]  # two epochs each
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and [r["step"] for r in lines] == [2, 4]  # one writer
    best = lines[-1]["best_epoch"]
    assert "trained 2 epochs (4 steps" in out0 and f"best epoch {best} " in out0
    assert "trained" not in out1 and "best epoch" not in out1  # rank 1 never validated: it has no best to report
    assert sorted(p.name for p in (run / "ckpt").iterdir() if not p.name.startswith(".")) == [
        "epoch-0001.safetensors", "epoch-0001.state.pt", "epoch-0002.safetensors", "epoch-0002.state.pt"]


def _tiny_run_args(tmp_path, run, steps: int) -> list[str]:
    from conftest import write_tiny_corpus

    write_tiny_corpus(tmp_path)
    return ["--out", str(run), "--clean", str(tmp_path / "clean"), "--noise", str(tmp_path / "noise"),
            "--cache", str(tmp_path / "cache"), "--epochs", "2", "--steps-per-epoch", str(steps), "--batch-size", "2",
            "--crop-seconds", "0.1", "--dev-count", "2", "--dev-seconds", "0.25", "--dev-fraction", "0.34",
            "--device", "cpu", "--method", "pu", "--risk", "pvu"]


def _join_or_kill(ctx, seconds: float) -> list[bool]:
    """Which of the spawned ranks were still running ``seconds`` from now (those are killed)."""
    import time

    end = time.monotonic() + seconds
    for p in ctx.processes:
        p.join(max(0.0, end - time.monotonic()))
    alive = [p.is_alive() for p in ctx.processes]
    for p in ctx.processes:
        if p.is_alive():
            p.kill()
            p.join()
    return alive


def test_sigterm_to_one_rank_stops_it_at_once_and_the_others_with_it(tmp_path):
    """A stop signal reaching one rank first (torchrun's shutdown, a scheduler stopping one node) is raised where
    it lands; the others are in DDP's all-reduce. Its barrier on the way out (Dist.close) waited for them, and they
    for it: every rank hung (gloo's 30 minutes). Without the barrier it exits 143 and the others see it gone."""
    import os
    import signal
    import time

    run = tmp_path / "run"
    ctx = mp.spawn(_train_worker, args=(_free_port(), _tiny_run_args(tmp_path, run, 2000), str(tmp_path)), nprocs=2,
                   join=False)
    deadline = time.monotonic() + 120
    while not (run / "config.json").exists() and time.monotonic() < deadline:  # written just before the first step
        time.sleep(0.1)
    time.sleep(2.0)
    os.kill(ctx.processes[1].pid, signal.SIGTERM)
    assert _join_or_kill(ctx, 30) == [False, False]
    code1, out1 = (tmp_path / "rank1.txt").read_text().split("\n", 1)
    assert code1 == "143" and out1.strip() == ""  # rank 1 says nothing: rank 0 reports for the run
    assert (tmp_path / "rank0.txt").read_text().split("\n", 1)[0] != "0"  # its peer is gone: a failed run


def _slow_rank_1_worker(rank: int, port: int, args: list[str], out_dir: str) -> None:
    """Rank 1 decodes for a minute (a large corpus); rank 0 notes when it is done."""
    import time

    if rank == 1:
        import trainer.train

        build_data = trainer.train.build_data
        trainer.train.build_data = lambda *a, **k: time.sleep(60) or build_data(*a, **k)
    _train_worker(rank, port, args, out_dir)


def test_a_refusal_on_rank_0_alone_ends_it_at_once_not_after_the_other_ranks_decode(tmp_path):
    """Only rank 0 takes the run folder's lock (and probes it): its refusal must reach torchrun when it is made. A
    barrier on its way out waited for the other ranks' setup (minutes of decoding), then let them train alone."""
    import fcntl
    import os

    run = tmp_path / "run"
    args = _tiny_run_args(tmp_path, run, 2)
    run.mkdir()
    fd = os.open(run, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another trainer in this folder
    try:
        ctx = mp.spawn(_slow_rank_1_worker, args=(_free_port(), args, str(tmp_path)), nprocs=2, join=False)
        ctx.processes[0].join(40)
        rank0_done = not ctx.processes[0].is_alive()
        _join_or_kill(ctx, 0)
    finally:
        os.close(fd)
    assert rank0_done
    code0, out0 = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert code0 == "1" and "is in use by another rtpulse train" in out0
