"""How parameters are split across parameter-server shards, and moved as one flat tensor per shard.

Every rank computes the same :class:`ShardLayout` from the model's parameter shapes alone, so no
rank has to send the layout to another. Each shard's parameters travel as one contiguous tensor:
one RPC per shard per step, never one per parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ShardLayout:
    """``names[s]`` lists the parameter names that shard ``s`` owns, in model order."""

    names: tuple[tuple[str, ...], ...]

    @classmethod
    def balanced(cls, model: nn.Module, num_shards: int) -> ShardLayout:
        """Greedy size balancing: largest parameter first, each to the currently lightest shard."""
        params = list(model.named_parameters())
        if num_shards > len(params):
            raise ValueError(f"expected at most {len(params)} parameter-server shards for this model, got {num_shards}")
        loads = [0] * num_shards
        owner: dict[str, int] = {}
        for name, p in sorted(params, key=lambda item: -item[1].numel()):
            shard = loads.index(min(loads))
            owner[name] = shard
            loads[shard] += p.numel()
        order = [name for name, _ in params]
        return cls(tuple(tuple(n for n in order if owner[n] == s) for s in range(num_shards)))

    @property
    def num_shards(self) -> int:
        return len(self.names)

    def sizes(self, model: nn.Module) -> list[int]:
        params = dict(model.named_parameters())
        return [sum(params[n].numel() for n in names) for names in self.names]

    def groups(self, model: nn.Module) -> list[list[nn.Parameter]]:
        params = dict(model.named_parameters())
        return [[params[n] for n in names] for names in self.names]


def flatten(tensors: list[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
    """Concatenate tensors into one flat CPU float32 tensor (into ``out`` when given).

    Tensors on a GPU are concatenated there and copied to the host once, not one copy per tensor.
    """
    flat = [t.detach().reshape(-1) for t in tensors]
    on_host = flat[0].device.type == "cpu" and flat[0].dtype == torch.float32
    if out is None:
        return torch.cat(flat).to("cpu", torch.float32)
    if on_host:
        return torch.cat(flat, out=out)
    out.copy_(torch.cat(flat))
    return out


def assign_flat(params: list[nn.Parameter], flat: torch.Tensor) -> None:
    """Copy consecutive slices of ``flat`` into ``params`` (one host-to-device copy when they live on a GPU)."""
    total = sum(p.numel() for p in params)
    if total != flat.numel():
        raise ValueError(f"expected a flat tensor of {total} values, got {flat.numel()}")
    source = flat.to(params[0].device, non_blocking=True)
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(source[offset : offset + n].view_as(p))
            offset += n
