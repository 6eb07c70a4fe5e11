"""CLIPSeg (Lüddecke and Ecker, 2022) from Hugging Face transformers, with its encoders run by us."""

from __future__ import annotations

import torch
from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

from trainables.models.segmenter import EncoderDecoderSegmenter


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
    raise ValueError(f"unknown CLIPSeg size {size!r}")


class CLIPSeg(EncoderDecoderSegmenter):
    """CLIPSeg with its encoders run by us rather than inside Hugging Face's ``no_grad``.

    ``frozen`` trains the decoder only (what the study's numbers come from); ``finetune`` lets
    gradients reach both CLIP encoders too; ``zeroshot`` is evaluated as built.
    """

    def __init__(self, net: CLIPSegForImageSegmentation, mode: str):
        super().__init__()
        self.net, self.mode = net, mode
        net.clip.requires_grad_(mode == "finetune")

    def train(self, mode: bool = True) -> CLIPSeg:
        super().train(mode)
        if self.mode != "finetune":  # frozen encoders compute the same features in training and evaluation
            self.net.clip.eval()
        return self

    def encode_image(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """CLIP vision activations at the extract layers, (B, 1 + grid tokens, width) each."""
        vision = self.net.clip.vision_model(pixel_values=pixel_values, output_hidden_states=True,
                                            interpolate_pos_encoding=True)
        return {f"act{k}": vision.hidden_states[i + 1] for k, i in enumerate(self.net.extract_layers)}

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """CLIP's pooled, projected text embedding: the decoder's condition."""
        text = self.net.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return {"embedding": text.pooler_output}

    def decode(self, image: dict[str, torch.Tensor], text: dict[str, torch.Tensor],
               size: tuple[int, int]) -> torch.Tensor:
        """Logits (B, 1, H, W) from the encoders' outputs; the decoder's output is at the input size."""
        activations = [image[f"act{k}"] for k in range(len(self.net.extract_layers))]
        logits = self.net.decoder(activations, text["embedding"]).logits
        # The decoder squeezes the channel axis, and with it the batch axis of a batch of one.
        return logits.reshape(activations[0].shape[0], 1, *logits.shape[-2:])


def build_clipseg(mode: str, size: str, weights: str | None = None) -> CLIPSeg:
    """``weights``: a hub id (``CIDAS/clipseg-rd64-refined``) or a local folder; None for random init."""
    if weights:
        net = CLIPSegForImageSegmentation.from_pretrained(weights)
    else:
        net = CLIPSegForImageSegmentation(clipseg_config(size))
    return CLIPSeg(net, mode)
