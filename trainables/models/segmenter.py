"""What the three VLSMs share: a forward made of encode_image, encode_text and decode.

Keeping the three steps apart is what lets the frozen-feature cache (trainables/feature_cache.py)
run the decoder alone on stored encoder outputs, with the same code as a full forward.
"""

from __future__ import annotations

import torch
from torch import nn


class EncoderDecoderSegmenter(nn.Module):
    """Subclasses set ``self.mode`` and define ``encode_image``, ``encode_text`` and ``decode``."""

    mode: str

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        # Encoders keep no graph unless they train (finetune) and the caller wants gradients.
        with torch.set_grad_enabled(self.mode == "finetune" and torch.is_grad_enabled()):
            image = self.encode_image(pixel_values)
            text = self.encode_text(input_ids, attention_mask)
        return self.decode(image, text, pixel_values.shape[-2:])
