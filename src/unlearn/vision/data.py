"""Image data for class forgetting: the 8×8 handwritten digits that scikit-learn ships (offline on every machine
that has scikit-learn), split into train and test sets, and the forget/retain views of a split."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Images:
    """Images ``x`` [n, channels, height, width] (float32) with integer labels ``y`` [n]."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def of_class(self, label: int) -> Images:
        keep = self.y == label
        return Images(self.x[keep], self.y[keep])

    def without_class(self, label: int) -> Images:
        keep = self.y != label
        return Images(self.x[keep], self.y[keep])


@dataclass
class ImageSplit:
    train: Images
    test: Images
    num_labels: int


def digits(test_fraction: float = 0.3, seed: int = 0) -> ImageSplit:
    """scikit-learn's digits (1,797 grey 8×8 images of 0–9, pixel values 0–16), scaled to [0, 1] and split
    stratified by class with ``seed``: ``test_fraction`` of every class goes to the test set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_fraction, random_state=seed, stratify=y.numpy()
    )
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    return ImageSplit(Images(x[train_idx], y[train_idx]), Images(x[test_idx], y[test_idx]), num_labels=10)
