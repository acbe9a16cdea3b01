"""
A few steps of DistributedDataParallel training on CPU (the gloo backend),
started by torchrun from launch.sh: torchrun sets RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT for every process.  Every rank prints one line
a step, ``rank R/W step S loss L``, and at the end its weights' sum, the
same on every rank: the gradients are averaged over all of them.
"""

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def main(steps=5):
    dist.init_process_group("gloo")  # reads torchrun's environment
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(rank)  # each rank its own data; DDP starts all from rank 0's weights
    model = DistributedDataParallel(torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(1, steps + 1):
        x = torch.randn(32, 16)
        loss = ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()  # all-reduces the gradients over every rank
        optimizer.step()
        print(f"rank {rank}/{world} step {step} loss {loss.item():.3f}", flush=True)
    total = sum(p.sum().item() for p in model.parameters())
    print(f"rank {rank}/{world} done, weights sum {total:.6f}", flush=True)
    # Every rank done before any tears gloo down: a rank that leaves while
    # another still talks to it can abort in gloo's teardown.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
