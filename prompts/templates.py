"""Prompt templates P0-P9 of the non-radiology datasets (paper, Appendix G.1).

Endoscopy (class "polyp"), ISIC ("skin melanoma") and DFU ("foot ulcer") share one template
family; only the class name and its five general descriptions differ. The rendered strings match
the released Kvasir annotations character for character.
"""

from __future__ import annotations

# Polyp descriptions are the released strings, misspellings included ("mucuos", "resemble
# mushroom like"): models were trained on these, so reproducing them beats correcting them.
# The other two follow the paper's Table 10.
CLASS_DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "polyp": (
        "a projecting growth of tissue",
        "often a bumpy flesh in rectum",
        "a small lump in the lining of colon",
        "a tissue growth that often resemble mushroom like stalks",
        "an abnormal growth of tissues projecting from a mucuos membrane",
    ),
    "skin melanoma": (
        "a spot with dark speckles",
        "a spot with irregular texture",
        "a dark sore with irregular texture",
        "an irregular sore with speckles",
        "a rough wound on skin",
    ),
    "foot ulcer": (
        "a wound in foot and toes",
        "a sore in foot and toes",
        "a sore in skin of foot and toe",
        "an abnormality in foot and toes",
        "an open sore or lesion in foot and toes",
    ),
}

NON_RADIOLOGY_PROMPT_TYPES = ("p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9")


def _words(*parts: str) -> str:
    # An empty attribute (e.g. no size for a mask of specks) must not leave a double space.
    return " ".join(part for part in parts if part)


def render_non_radiology(
    class_name: str,
    shape: str,
    color: str,
    size: str,
    number: str,
    location: str,
) -> dict[str, list[str]]:
    """Every non-radiology prompt type for one sample, each as a list of strings.

    p0 is [""], p1-p6 hold one string, p7-p9 five (one per class description). `size` and
    `location` are the comma-joined words of `prompts.attributes.MaskAttributes`.
    """
    try:
        descriptions = CLASS_DESCRIPTIONS[class_name]
    except KeyError:
        known = ", ".join(sorted(CLASS_DESCRIPTIONS))
        raise KeyError(f"no descriptions for class {class_name!r}; known: {known}") from None

    p2 = _words(shape, class_name)
    p3 = _words(color, p2)
    p4 = _words(size, p3)
    p5 = _words(number, p4)
    where = f"located in {location} of the image"
    return {
        "p0": [""],
        "p1": [class_name],
        "p2": [p2],
        "p3": [p3],
        "p4": [p4],
        "p5": [p5],
        "p6": [f"{p5}, {where}"],
        "p7": [f"{class_name} which is {d}" for d in descriptions],
        "p8": [f"{p5} which is {d}" for d in descriptions],
        "p9": [f"{p5} which is {d} {where}" for d in descriptions],
    }
