"""Prompts for a shard row, from its mask, image and metadata: the attributes, then the templates."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from prompts.attributes import mask_attributes
from prompts.images import open_image
from prompts.metadata import metadata_attributes
from prompts.templates import PROMPT_TYPES, TEMPLATE_ATTRIBUTES, render

# Attributes each family takes from the mask (and image) rather than from metadata.
FROM_MASK: dict[str, tuple[str, ...]] = {
    "non_radiology": ("number", "size", "location", "shape", "color"),
    "busi": ("number", "size", "location", "shape"),
    "camus": ("shape",),
    "chexlocalize": ("location", "shape"),
    "mimic": (),
}


def row_attributes(family: str, row: Mapping) -> dict[str, str]:
    """Template attributes of one shard row (needs ``mask``, ``image``, ``class_name``, ``metadata``).

    A ValueError names what is wrong: an unknown family, or an image or mask over the limits of
    ``prompts.images`` (an ImageLimitError)."""
    if family not in FROM_MASK:
        raise ValueError(f"unknown prompt family {family!r} (known: {', '.join(FROM_MASK)})")
    attributes = {"class_name": row["class_name"], **metadata_attributes(family, row.get("metadata") or {})}
    wanted = FROM_MASK[family]
    if wanted:
        with open_image(row["mask"], "field 'mask'") as mask_file, \
                open_image(row["image"], "field 'image'") as image_file:
            mask = np.asarray(mask_file) != 0
            image = np.asarray(image_file.convert("RGB"))
        found = mask_attributes(mask, image)
        from_mask = {"number": found.number, "size": found.sizes, "location": found.locations,
                     "shape": found.shape, "color": found.color}
        attributes.update({k: from_mask[k] for k in wanted if k not in attributes})
    return attributes


def row_prompts(family: str, attributes: Mapping[str, str]) -> dict[str, list[str]]:
    """Every prompt type of the family whose attributes the row has; the rest are left out."""
    if family == "busi" and attributes.get("tumor_type") == "normal":
        # A normal image has one sentence ("No tumor ...") at every level; nothing else to show.
        return render(family, attributes, PROMPT_TYPES[family])
    usable = [p for p in PROMPT_TYPES[family]
              if all(a in attributes for a in TEMPLATE_ATTRIBUTES[family].get(p, ()) if a != "description")]
    return render(family, attributes, usable)
