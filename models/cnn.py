"""The CNN of the course notes: [conv -> (batch norm) -> ReLU] x n -> max-pool blocks, then a fully connected head.

Each block keeps H and W with `padding = kernel_size // 2` (stride 1, an odd kernel_size), doubles or widens the
channels, and the 2x2 max-pool halves H and W: 28x28x1 -> 14x14x32 -> 7x7x64 -> 3x3x128 for widths (32, 64, 128).
Left out on purpose: residual connections and global average pooling (they belong to later architectures).
"""
import torch
from torch import nn

from models import check_sizes


def conv_output(size: tuple[int, ...], kernel_size: int, stride: int, padding: int | str) -> tuple[int, ...]:
    """(H, W) after a convolution: (n + 2 * padding - kernel_size) // stride + 1; "same" keeps n (PyTorch allows
    it with stride 1 only), "valid" is padding 0. (With dilation d, kernel_size counts d * (kernel_size - 1) + 1.)"""
    if padding == "same":
        return size
    padding = 0 if padding == "valid" else padding
    return tuple((n + 2 * padding - kernel_size) // stride + 1 for n in size)


class ConvNet(nn.Module):
    """Images (B, C, H, W) -> class logits (B, num_classes)."""

    reads = ("images",)  # the data kinds it is built for (train.py refuses others in one line)

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int],
                 widths: tuple[int, ...] = (32, 64), convs_per_block: int = 1, kernel_size: int = 3,
                 padding: int | str | None = None, stride: int = 1, batch_norm: bool = True,
                 hidden_size: int = 256, dropout: float = 0.25) -> None:
        super().__init__()
        check_sizes(widths=widths, convs_per_block=convs_per_block, kernel_size=kernel_size, stride=stride,
                    hidden_size=hidden_size)
        if isinstance(padding, int):
            check_sizes(0, padding=padding)
        padding = kernel_size // 2 if padding is None else padding  # "same" padding for odd kernels
        layers, c, size = [], in_channels, tuple(image_size)
        for block, width in enumerate(widths, 1):
            for i in range(convs_per_block):
                # Only the first conv of a block strides; bias is redundant right before batch norm.
                step = stride if i == 0 else 1
                layers.append(nn.Conv2d(c, width, kernel_size, stride=step, padding=padding, bias=not batch_norm))
                layers += [nn.BatchNorm2d(width), nn.ReLU()] if batch_norm else [nn.ReLU()]
                c, size = width, conv_output(size, kernel_size, step, padding)
            layers.append(nn.MaxPool2d(2))  # halves H and W
            size = tuple(n // 2 for n in size)
            if min(size) < 1:
                raise ValueError(f"widths={list(widths)}, kernel_size={kernel_size}, padding={padding}, "
                                 f"stride={stride}: block {block} leaves no pixels of the "
                                 f"{image_size[0]}x{image_size[1]} images; "
                                 "use fewer widths, a smaller stride or kernel, or more padding")
        self.features = nn.Sequential(*layers)
        n_features = c * size[0] * size[1]  # (C, H, W) after the last block, flattened
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(n_features, hidden_size), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden_size, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # (B, num_classes)
