"""Where this process sits in a distributed job: rank, world size, local rank and DataLoader worker.

One :class:`World` for every part of the package that splits work (the shard builder, streaming
readers, the evaluation harness, token learning), read from ``torch.distributed`` when a process
group is up, else from the launcher's environment: torchrun (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``) or, where asked for, SLURM's srun (``SLURM_PROCID``, ``SLURM_NTASKS``,
``SLURM_LOCALID``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["World", "init_process_group"]


@dataclass(frozen=True)
class World:
    """This process's place in a job: ``rank`` of ``world_size`` processes (``local_rank`` on its
    node) and, inside a ``DataLoader`` worker, ``worker`` of ``num_workers``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    worker: int = 0
    num_workers: int = 1

    @classmethod
    def from_env(cls, *, slurm: bool = False) -> World:
        """The launcher's environment (:meth:`launched`), or a single process when none set it."""
        return cls.launched(slurm=slurm) or cls()

    @classmethod
    def launched(cls, *, slurm: bool = False) -> World | None:
        """The world torchrun (or, with ``slurm``, srun) launched this process into; ``None`` when neither did.

        SLURM is opt-in because a batch script running one process still carries
        ``SLURM_NTASKS``; only code the user pointed at srun (``--engine torchrun``) reads it.
        """
        env = os.environ
        if "RANK" in env and "WORLD_SIZE" in env:
            local = env.get("LOCAL_RANK", env.get("SLURM_LOCALID", 0))
            return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(local))
        if slurm and "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
            return cls(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]),
                       int(env.get("SLURM_LOCALID", env.get("LOCAL_RANK", 0))))
        return None

    @classmethod
    def current(cls) -> World:
        """This process and DataLoader worker: ``torch.distributed`` if a group is up, else the environment."""
        import torch.distributed as dist
        import torch.utils.data

        base = cls.from_env()
        if dist.is_available() and dist.is_initialized():
            base = cls(dist.get_rank(), dist.get_world_size(), base.local_rank)
        info = torch.utils.data.get_worker_info()
        if info is None:
            return base
        return cls(base.rank, base.world_size, base.local_rank, info.id, info.num_workers)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0 (the process that prints and writes shared files)."""
        return self.rank == 0

    @property
    def reader(self) -> tuple[int, int]:
        """``(position, count)`` of this reader across all workers of all ranks."""
        return self.rank * self.num_workers + self.worker, self.world_size * self.num_workers

    def device(self, device: str) -> str:
        """``"cuda"`` without an index means one GPU per rank on each node: ``cuda:{local_rank}``."""
        return f"cuda:{self.local_rank}" if device == "cuda" and self.distributed else device


def init_process_group(device: str) -> tuple[object | None, bool]:
    """Join the torchrun process group when ``WORLD_SIZE > 1``.

    Returns:
        ``(torch.distributed or None, created_here)``: the module when more than one process
        takes part, and whether this call created the group (the caller then destroys it).
    """
    import torch.distributed as dist

    if not dist.is_available():
        return None, False
    if dist.is_initialized():
        return (dist if dist.get_world_size() > 1 else None), False
    if World.from_env().distributed:
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        return dist, True
    return None, False
