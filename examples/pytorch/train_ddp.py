"""
A few steps of DistributedDataParallel training on CPU (the gloo backend),
started by torchrun from launch.sh: torchrun sets RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT for every process.
"""

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def main(steps=20):
    dist.init_process_group("gloo")  # reads torchrun's environment
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(steps):
        x = torch.randn(32, 16)
        loss = ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()  # gradients are averaged over every process here
        optimizer.step()
        if rank == 0 and step % 5 == 0:
            print(f"step {step}: loss {loss.item():.3f} across {world} processes", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
