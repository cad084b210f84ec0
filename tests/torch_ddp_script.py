#!/usr/bin/python3
"""An ordinary PyTorch DDP script over Gloo, as users run it under torchrun: env:// rendezvous from
MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE. tests/integration/test_torchrun.cc runs it under
`cohort launch` unchanged. It checks an all-reduce against its closed form, trains a small model
with DistributedDataParallel, and checks that every rank ends with the same parameters, printing
"allreduce ok", "ddp ok" and "done" lines. With --die-once, rank 1 kills itself (SIGKILL) on the
job's first attempt (TORCHELASTIC_RESTART_COUNT 0), so that a restart can be tested."""
import argparse, os, signal
import torch
import torch.distributed as dist
import torch.nn as nn


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--die-once", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert rank == int(os.environ["RANK"]) and world == int(os.environ["WORLD_SIZE"])
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    expect = world * (world + 1) / 2
    assert t.item() == expect, (t.item(), expect)
    print(f"rank {rank}: allreduce ok {t.item():g} local_rank {os.environ['LOCAL_RANK']} "
          f"restart {os.environ.get('TORCHELASTIC_RESTART_COUNT')}", flush=True)
    if args.die_once and rank == 1 and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
        os.kill(os.getpid(), signal.SIGKILL)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    for _ in range(args.steps):
        x, y = torch.randn(16, 8, generator=g), torch.randint(0, 2, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    flat = torch.cat([q.detach().flatten() for q in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    assert all(torch.equal(gathered[0], q) for q in gathered), "ranks disagree after DDP"
    print(f"rank {rank}: ddp ok", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank}: done", flush=True)


if __name__ == "__main__":
    main()
