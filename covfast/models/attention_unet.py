"""Attention U-Net (Oktay et al. 2018, "Attention U-Net: Learning Where to Look for the Pancreas",
arXiv:1804.03999): a U-Net whose skip connections pass through additive attention gates driven by
the decoder's gating signal, so the decoder only sees the encoder features the gate lets through."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..archs import DEFAULT_FEATURES
from ..outputs import ModelOutput, model_output
from .image_head import ImageHead

__all__ = ["ConvBlock", "UpConv", "AttentionGate", "AttentionUNet", "DEFAULT_FEATURES"]

# DEFAULT_FEATURES (covfast.archs), the channel widths per level, finest first: 2.18 M parameters, 8.35 GFLOPs per 256x256 image forward
# (2.09 at 128 px; torch.utils.flop_counter, 2 FLOPs per multiply-add). Twice the widths cost 4x
# (33.3 GFLOPs at 256 px); the paper's (64, ..., 1024) 16x. Small enough to train on a laptop CPU.


class ConvBlock(nn.Sequential):
    "Two 3x3 conv-BN-ReLU layers."

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class UpConv(nn.Sequential):
    "x2 nearest upsampling and a 3x3 conv-BN-ReLU (no checkerboard artefacts of transposed convs)."

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class AttentionGate(nn.Module):
    "Additive attention: alpha = sigmoid(psi(relu(W_g g + W_x x))); returns (x * alpha, alpha)."

    def __init__(
        self,
        c_gate: int,  # channels of the decoder's gating signal g
        c_skip: int,  # channels of the encoder's skip features x
        c_inter: int,  # channels of the joint embedding
    ):
        super().__init__()
        self.w_g = nn.Sequential(nn.Conv2d(c_gate, c_inter, 1, bias=False), nn.BatchNorm2d(c_inter))
        self.w_x = nn.Sequential(nn.Conv2d(c_skip, c_inter, 1, bias=False), nn.BatchNorm2d(c_inter))
        self.psi = nn.Sequential(nn.Conv2d(c_inter, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.psi(F.relu(self.w_g(g) + self.w_x(x)))
        return x * alpha, alpha


class AttentionUNet(nn.Module):
    """Encoder of conv blocks, attention-gated skips, decoder on the gated features, 1x1 head with `n_out` logits
    (the `infection` output); with `image_head`, the image-level logit of an `ImageHead` on the bottleneck (`covid`);
    with `lung_head`, a second 1x1 head on the same decoder features with (background, lung) logits (`lung`)."""

    def __init__(
        self,
        in_channels: int = 3,  # X-rays are read as 3-channel images
        n_out: int = 2,  # logits: background, infection
        features: tuple[int, ...] = DEFAULT_FEATURES,  # channel widths per level, finest first; depth = len(features)
        image_head: bool = False,  # add the image-level logit (on the bottleneck) as the `covid` output
        lung_head: bool = False,  # add (background, lung) logits from the last decoder block as the `lung` output
    ):
        super().__init__()
        if len(features) < 2 or any(f < 1 for f in features):
            raise ValueError(f"features must hold at least 2 positive widths, got {features!r}")
        self.features = tuple(features)
        self.encoder = nn.ModuleList([ConvBlock(in_channels, features[0])] +
                                     [ConvBlock(a, b) for a, b in zip(features, features[1:])])
        self.pool = nn.MaxPool2d(2)
        deep = list(reversed(features))  # coarsest first
        self.ups = nn.ModuleList([UpConv(a, b) for a, b in zip(deep, deep[1:])])
        self.gates = nn.ModuleList([AttentionGate(b, b, max(b // 2, 1)) for b in deep[1:]])
        self.decoder = nn.ModuleList([ConvBlock(2 * b, b) for b in deep[1:]])
        self.head = nn.Conv2d(features[0], n_out, 1)
        self.image_head = ImageHead(features[-1]) if image_head else None
        self.lung_head = nn.Conv2d(features[0], 2, 1) if lung_head else None

    @property
    def multiple(self) -> int:
        "Input sides are padded to a multiple of this."
        return 2 ** (len(self.features) - 1)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[ModelOutput, list[torch.Tensor]]:
        "The outputs (`infection`: logits (B, n_out, H, W); `covid`: (B,) with the image head) and every gate's attention map (B, 1, h, w) at its (padded) skip's size, coarsest first."
        h, w = x.shape[-2:]
        m = self.multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:  # any input size: pad to a multiple of 2**depth, crop the output back
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="constant", value=0.0)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        image_logit = self.image_head(x) if self.image_head is not None else None  # x: the bottleneck
        maps = []
        for up, gate, block, skip in zip(self.ups, self.gates, self.decoder, reversed(skips[:-1])):
            g = up(x)
            gated, alpha = gate(g, skip)
            maps.append(alpha)
            x = block(torch.cat([gated, g], dim=1))
        lung = self.lung_head(x)[..., :h, :w] if self.lung_head is not None else None
        return model_output(infection=self.head(x)[..., :h, :w], covid=image_logit, lung=lung), maps

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return self.forward_with_attention(x)[0]
