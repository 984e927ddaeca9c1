"""FSDP2 sharding of the transformer across the processes of an `accelerate launch` (shard=true, or an FSDP
accelerate config on CPU processes).

accelerate's FSDP plugin makes these same torch `fully_shard` calls, and an FSDP launch on GPUs goes through
it. But accelerate 1.15 turns FSDP on only for accelerator devices (its state picks FSDP inside the multi-GPU
branch), so CPU processes could never run, or test, sharded training; calling torch's `fully_shard` on the
process group accelerate has already joined gives the same sharding there.
"""

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard


def shard(model: torch.nn.Module, device: torch.device) -> None:
    """Shard each transformer block (the classes diffusers lists in `_no_split_modules`, as accelerate's
    auto-wrap does), then the rest of the model; parameters become DTensors in place."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    blocks = set(getattr(model, "_no_split_modules", None) or [])
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Gather the whole state dict onto the main process's CPU (a collective: every process must call it;
    the others get an empty dict)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
