"""Rank and world size under ``torchrun``: training's DistributedDataParallel runs on gloo (CPU)."""

from __future__ import annotations

import os

import torch


class Distributed:
    """Rank/world size under torchrun; initialises the gloo process group when needed."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.owns_group = False
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo")
            self.owns_group = True

    @property
    def main(self) -> bool:
        """Rank 0: the process that evaluates, logs and writes."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def broadcast_buffers(self, *modules: torch.nn.Module) -> None:
        """Every rank takes rank 0's buffers (BatchNorm statistics drift apart per rank), so that
        every rank scores one model and they stop together."""
        if self.world > 1:
            for m in modules:
                for buf in m.buffers():
                    torch.distributed.broadcast(buf, src=0)

    def close(self) -> None:
        if self.owns_group:
            torch.distributed.destroy_process_group()
