"""Model registry: one factory, ``build_model(name, mode, size, weights)``, and the per-model input table.

Architecture and weights are kept apart: every model builds offline from a config with random
weights, and loads pretrained weights only when ``weights`` names a hub id or a local folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

MODES = ("frozen", "finetune")
SIZES = ("small", "full")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelInputs:
    """What the data pipeline needs to feed a model: one row of the input table."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    context_length: int
    threshold: float


# Full size follows the study (352x352, ImageNet statistics, 77 CLIP tokens); small is the same
# architecture at a width that trains in seconds on a CPU, for tests and the demo.
MODEL_INPUTS: dict[tuple[str, str], ModelInputs] = {
    ("clipseg", "full"): ModelInputs(352, IMAGENET_MEAN, IMAGENET_STD, 77, 0.5),
    ("clipseg", "small"): ModelInputs(128, IMAGENET_MEAN, IMAGENET_STD, 32, 0.5),
}


def model_inputs(name: str, size: str) -> ModelInputs:
    try:
        return MODEL_INPUTS[(name, size)]
    except KeyError:
        known = ", ".join(f"{n}/{s}" for n, s in MODEL_INPUTS)
        raise ValueError(f"unknown model {name!r} at size {size!r} (known: {known})") from None


def clipseg_config(size: str) -> CLIPSegConfig:
    if size == "full":
        # CIDAS/clipseg-rd64-refined: ViT-B/16, decoder width 64, refined transposed convolutions.
        return CLIPSegConfig(
            vision_config={"patch_size": 16}, reduce_dim=64, use_complex_transposed_convolution=True
        )
    if size == "small":
        return CLIPSegConfig(
            text_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "max_position_embeddings": 32},
            vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
                           "num_attention_heads": 2, "patch_size": 8, "image_size": 128},
            projection_dim=64, reduce_dim=32, extract_layers=[1, 2, 3], decoder_num_attention_heads=2,
            decoder_intermediate_size=128,
        )
    raise ValueError(f"unknown size {size!r}: expected one of {SIZES}")


class CLIPSeg(nn.Module):
    """CLIPSeg with its encoders run by us rather than inside Hugging Face's ``no_grad``.

    ``frozen`` trains the decoder only (what the study's numbers come from); ``finetune`` lets
    gradients reach both CLIP encoders too.
    """

    def __init__(self, net: CLIPSegForImageSegmentation, mode: str):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: expected one of {MODES}")
        self.net, self.mode = net, mode
        net.clip.requires_grad_(mode == "finetune")

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        clip, layers = self.net.clip, self.net.extract_layers
        with torch.set_grad_enabled(self.mode == "finetune" and torch.is_grad_enabled()):
            vision = clip.vision_model(pixel_values=pixel_values, output_hidden_states=True,
                                       interpolate_pos_encoding=True)
            activations = [vision.hidden_states[i + 1] for i in layers]
            text = clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        logits = self.net.decoder(activations, text).logits
        # The decoder squeezes the channel axis, and with it the batch axis of a batch of one.
        return logits.reshape(pixel_values.shape[0], 1, *logits.shape[-2:])


def build_model(name: str, mode: str = "frozen", size: str = "small", weights: str | None = None) -> nn.Module:
    """Build a registered model; ``weights`` is a hub id or local folder, None for random init."""
    if name != "clipseg":
        raise ValueError(f"unknown model {name!r} (known: clipseg)")
    if weights:
        net = CLIPSegForImageSegmentation.from_pretrained(weights)
    else:
        net = CLIPSegForImageSegmentation(clipseg_config(size))
    return CLIPSeg(net, mode)
