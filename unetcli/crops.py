"""The training data as the DataLoader sees it: random crops, augmented, as tensors."""

from __future__ import annotations

import numpy as np

from .images import to_unit_range
from .transforms import to_network_input
from .weightmap import border_weight_map


class CropDataset:
    """Random training crops: the train pipeline applied to the pairs of a sample store (cache.py), each image
    scaled to [0, 1] as it is drawn; with border weights, also to each mask's weight map (the U-Net paper's),
    computed once per mask for a store held in memory and as each crop is drawn for a streaming one."""

    def __init__(self, store, pipeline, *, length: int, border: tuple[float, float] | None = None):
        self.store, self.pipeline, self.length, self.border = store, pipeline, length, border
        self.weights = None
        if border is not None and store.in_memory:
            self.weights = [border_weight_map(s.mask, *border, objects=s.objects) for s in store]

    def __len__(self) -> int:
        return self.length

    def _weight(self, index: int, sample) -> np.ndarray:
        if self.weights is not None:
            return self.weights[index]
        return border_weight_map(sample.mask, *self.border, objects=sample.objects)

    def __getitem__(self, index: int):
        import torch

        i = index % len(self.store)
        sample = self.store[i]
        extra = {"weight": self._weight(i, sample)} if self.border is not None else {}
        image, out = to_network_input(self.pipeline, to_unit_range(sample.image), mask=sample.mask, **extra)
        weight = torch.from_numpy(np.ascontiguousarray(out["weight"])) if self.border is not None else torch.ones(())
        return torch.from_numpy(image), torch.from_numpy(out["mask"]).long(), weight
