"""The training data as the DataLoader sees it: random crops, augmented, as tensors."""

from __future__ import annotations

import numpy as np

from .images import to_unit_range
from .transforms import to_network_input
from .weightmap import border_weight_map


class CropDataset:
    """Random training crops: the train pipeline applied to cached, [0, 1]-scaled images (and, with
    border weights, to each mask's precomputed weight map)."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], pipeline, *, length: int,
                 weights: list[np.ndarray] | None = None):
        self.images, self.masks, self.weights, self.pipeline, self.length = images, masks, weights, pipeline, length

    @classmethod
    def from_samples(cls, samples: list, pipeline, *, length: int, border: tuple[float, float] | None = None) -> CropDataset:
        """From decoded samples (`data.Sample`); `border` = (w0, sigma) adds the U-Net paper's weight maps,
        computed once per mask here (from the object ids of instance masks)."""
        masks = [s.mask for s in samples]
        weights = None if border is None else [border_weight_map(s.mask, *border, objects=s.objects) for s in samples]
        return cls([to_unit_range(s.image) for s in samples], masks, pipeline, length=length, weights=weights)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        import torch

        i = index % len(self.images)
        extra = {"weight": self.weights[i]} if self.weights is not None else {}
        image, out = to_network_input(self.pipeline, self.images[i], mask=self.masks[i], **extra)
        weight = torch.from_numpy(np.ascontiguousarray(out["weight"])) if self.weights is not None else torch.ones(())
        return torch.from_numpy(image), torch.from_numpy(out["mask"]).long(), weight
