"""Rank, world size and device under ``torchrun``, on one machine or several.

Training's DistributedDataParallel runs over NCCL between GPUs and gloo between CPUs
(:func:`edgeexit.torchdevice.distributed_backend`); every process takes the GPU of its
``LOCAL_RANK``. The same command runs on one machine (``torchrun --standalone``) or on several
(``torchrun --nnodes N --node-rank K --rdzv-backend c10d --rdzv-endpoint HOST:PORT``; see
``docs/guides/scale-out.md``). Rank 0 evaluates, logs and writes.
"""

from __future__ import annotations

import hashlib
import os

import torch

from edgeexit.torchdevice import distributed_backend, resolve_device


def process_rank() -> int:
    """This process's global rank under torchrun (0 outside it)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Rank 0 (or no torchrun): the process that writes files and reports."""
    return process_rank() == 0


class Distributed:
    """Rank/world size under torchrun and the device this process computes on; initialises
    the process group (NCCL on GPUs, gloo on CPUs) when needed.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:func:`resolve_device`).
    """

    def __init__(self, device: str | torch.device | None = "auto") -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = process_rank()
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.owns_group = False
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group(distributed_backend(self.device))
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

    def weight_digests(self, model: torch.nn.Module) -> list[str]:
        """A digest of ``model``'s parameters and buffers on every rank (rank order): all equal
        when DDP kept the ranks' weights in step. One entry outside torchrun."""
        h = hashlib.sha256()
        for name, t in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        mine = int(h.hexdigest()[:15], 16)  # 60 bits: fits a torch.long
        if self.world == 1:
            return [f"{mine:015x}"]
        code = torch.tensor([mine], dtype=torch.long, device=self._comm_device())
        every = [torch.zeros_like(code) for _ in range(self.world)]
        torch.distributed.all_gather(every, code)
        return [f"{int(c.item()):015x}" for c in every]

    def _comm_device(self) -> torch.device:
        return self.device if distributed_backend(self.device) == "nccl" else torch.device("cpu")

    def close(self) -> None:
        if self.owns_group:
            torch.distributed.destroy_process_group()
