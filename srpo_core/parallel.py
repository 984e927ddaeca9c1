"""The multi-process side of a session in one place: joining the process group (accelerate), replicating (DDP) or
sharding (FSDP2) the transformer, and every collective a step needs. A single process runs the same calls, which
then cost nothing."""

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import DistributedType, broadcast_object_list, parse_flag_from_env
from torch.distributed.tensor import DTensor

from . import sharding
from .config import ConfigError, RunConfig


class Processes:
    def __init__(self, cfg: RunConfig, device: torch.device):
        mp = cfg.mixed_precision if cfg.mixed_precision != "auto" else ("bf16" if device.type == "cuda" else "no")
        # Under `accelerate launch` this joins the process group (DDP on GPUs, gloo on CPUs) and selects this
        # process's GPU, so the models built next land on it.
        self.accelerator = Accelerator(mixed_precision=mp, cpu=device.type == "cpu",
                                       kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
        self.count, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process
        self._accelerate_fsdp = self.accelerator.distributed_type == DistributedType.FSDP  # an FSDP config, on GPUs
        # accelerate ignores an FSDP config on CPU processes (see sharding.py); srpo_core shards them itself
        self._shard = self.count > 1 and (cfg.shard or parse_flag_from_env("ACCELERATE_USE_FSDP"))
        if (self._shard or self._accelerate_fsdp) and cfg.method == "refl":
            raise ConfigError("sharded training cannot run method refl: ReFL stops each process's rollout at a step of "
                              "its own, while sharded forwards run in lockstep; use srpo, direct-align or draft.")
        self.sharded = False

    def prepare(self, backend, params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
        """Shard or wrap the transformer for this many processes; returns the parameters the optimizer steps."""
        if self._shard and not self._accelerate_fsdp:
            sharding.shard(backend.transformer, self.accelerator.device)
        elif self.count > 1:
            # DDP, or accelerate's FSDP plugin when its config asks for it. DDP's no-grad rollouts and previews make
            # no collective calls (no buffer broadcast), so the main process alone may render previews.
            backend.denoiser = self.accelerator.prepare_model(backend.transformer)
        self.sharded = sharding.is_sharded(backend.transformer)
        return [p for p in backend.transformer.parameters() if p.requires_grad] if self.sharded else params

    def share(self, value):
        """The main process's value, on every process."""
        return broadcast_object_list([value])[0] if self.count > 1 else value

    def agree_to_stop(self, requested: bool) -> bool:
        """True on every process when any process was asked to stop, so all stop at the same step."""
        if self.count == 1:
            return requested
        flag = torch.tensor([float(requested)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "sum") > 0)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(values, "mean") if self.count > 1 else values

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float) -> float:
        norm = self.accelerator.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)

    def replica_spread(self, params: list[torch.nn.Parameter]) -> float | None:
        """Largest difference between processes of a fingerprint of the trained weights (0 = in sync); None for
        one process or sharded weights, which have one copy spread over the processes: nothing to compare."""
        if self.count == 1 or self.sharded:
            return None
        flat = torch.cat([p.detach().double().flatten() for p in params])
        fingerprint = torch.stack([flat.sum(), flat.square().sum(), flat[::7].sum()]).unsqueeze(0)
        gathered = self.accelerator.gather(fingerprint)
        return float((gathered.max(0).values - gathered.min(0).values).max())

    def full_state_dict(self, transformer: torch.nn.Module) -> dict | None:
        """Sharded weights gathered onto the main process (a collective); None when the module holds them whole."""
        return sharding.full_state_dict(transformer) if self.sharded else None

    def end(self) -> None:
        if self.count > 1:
            self.accelerator.wait_for_everyone()

    def close(self) -> None:
        if self.count > 1:
            # Left to interpreter shutdown, gloo's worker threads can abort the exiting process (SIGABRT,
            # "terminate called without an active exception"); destroying the process group first avoids it.
            self.accelerator.end_training()
