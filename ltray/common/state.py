"""Per-index state (docs/math/README.md, convention 3): a float buffer keyed by dataset index."""

from __future__ import annotations

import torch


def first_occurrence(index: torch.Tensor) -> torch.Tensor:
    """Boolean mask keeping the first occurrence of every value of `index` (drops sampler padding duplicates)."""
    if index.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=index.device)
    order = torch.argsort(index, stable=True)
    sorted_index = index[order]
    is_first_sorted = torch.ones_like(sorted_index, dtype=torch.bool)
    is_first_sorted[1:] = sorted_index[1:] != sorted_index[:-1]
    keep = torch.zeros_like(is_first_sorted)
    keep[order] = is_first_sorted
    return keep


class IndexedEMA:
    """An exponential moving average per dataset index. Zero-initialised; the first visit of an index takes the raw
    value; later visits take (1 − β)·value + β·old; at most one update per index per epoch (later ones in the same
    epoch are dropped, as are duplicates inside one update). Values are float32 and live on `device`."""

    def __init__(self, size: int, shape: tuple[int, ...] = (), device: torch.device | str = "cpu") -> None:
        self.values = torch.zeros((size, *shape), dtype=torch.float32, device=device)
        self.visited = torch.zeros(size, dtype=torch.bool, device=device)
        self.last_epoch = torch.full((size,), -1, dtype=torch.int64, device=device)

    def __len__(self) -> int:
        return self.values.shape[0]

    def resize(self, size: int) -> None:
        """Grow (zero-filled, unvisited) or shrink the buffer, keeping existing entries."""
        old = len(self)
        if size == old:
            return
        if size < old:
            self.values, self.visited, self.last_epoch = self.values[:size], self.visited[:size], self.last_epoch[:size]
            return
        pad = size - old
        dev = self.values.device
        self.values = torch.cat([self.values, torch.zeros((pad, *self.values.shape[1:]), device=dev)])
        self.visited = torch.cat([self.visited, torch.zeros(pad, dtype=torch.bool, device=dev)])
        self.last_epoch = torch.cat([self.last_epoch, torch.full((pad,), -1, dtype=torch.int64, device=dev)])

    def update(self, index: torch.Tensor, value: torch.Tensor, epoch: int, beta: float) -> torch.Tensor:
        """Apply one EMA step to `index` (int64 [n]) with `value` ([n, *shape]). Returns the indices updated."""
        index = index.to(self.values.device, torch.int64)
        value = value.detach().to(self.values.device, torch.float32)
        if index.numel() and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"dataset index out of range [0, {len(self)})")
        keep = first_occurrence(index) & (self.last_epoch[index] != epoch)
        index, value = index[keep], value[keep]
        old = self.values[index]
        seen = self.visited[index].view(-1, *([1] * (value.dim() - 1)))
        self.values[index] = torch.where(seen, (1.0 - beta) * value + beta * old, value)
        self.visited[index] = True
        self.last_epoch[index] = epoch
        return index

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"values": self.values.cpu(), "visited": self.visited.cpu(), "last_epoch": self.last_epoch.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        dev = self.values.device
        self.values = state["values"].to(dev, torch.float32).clone()
        self.visited = state["visited"].to(dev, torch.bool).clone()
        self.last_epoch = state["last_epoch"].to(dev, torch.int64).clone()
