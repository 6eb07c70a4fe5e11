"""The study's CNN baselines: UNet, UNet++ and DeepLabV3+ on ResNet-50, from segmentation_models_pytorch."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

ARCHITECTURES = {"unet": smp.Unet, "unetpp": smp.UnetPlusPlus, "deeplabv3plus": smp.DeepLabV3Plus}

# Full size is smp's defaults on ResNet-50, as the study used them. Small keeps the same
# architectures on a shallow ResNet-18 with narrow decoders, for CPU tests and the demo.
SMALL = {
    "unet": {"encoder_depth": 3, "decoder_channels": (32, 16, 8)},
    "unetpp": {"encoder_depth": 3, "decoder_channels": (32, 16, 8)},
    "deeplabv3plus": {"encoder_depth": 3, "decoder_channels": 32, "encoder_output_stride": 8},
}


class TextFreeSegmenter(nn.Module):
    """A CNN behind the VLSM interface: it takes the prompt's tokens and ignores them."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(pixel_values)


def build_cnn(name: str, mode: str, size: str, weights: str | None = None) -> TextFreeSegmenter:
    """``weights``: "imagenet" for ImageNet encoder weights (downloads), None for random init."""
    if mode != "finetune":
        raise ValueError(f"{name} is a CNN baseline: it trains end to end, so its mode must be finetune, not {mode!r}")
    if weights not in (None, "imagenet"):
        raise ValueError(f"{name} takes weights 'imagenet' or none, not {weights!r}")
    options = {"encoder_name": "resnet50"} if size == "full" else {"encoder_name": "resnet18", **SMALL[name]}
    return TextFreeSegmenter(ARCHITECTURES[name](encoder_weights=weights, classes=1, **options))
