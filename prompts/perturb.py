"""Prompt perturbations for the study's ablation (paper, Figure 3), applied at evaluation time.

A perturbation replaces the value of one attribute and renders the prompt again from the same
template, so it changes exactly that attribute and nothing else:

- ``random_word``: the value becomes an uncommon English word, the same one for a sample every time;
- ``opposite``: the value becomes its semantic opposite, from the table below;
- ``class_only``: the prompt becomes the class-name-only P1, whatever it was trained on.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from prompts.templates import CLASS_DESCRIPTIONS, TEMPLATE_ATTRIBUTES, render

KINDS = ("random_word", "opposite", "class_only")

# Words a segmentation model will not have seen in a medical prompt: rare, but real English.
UNCOMMON_WORDS = (
    "abecedarian", "bombinate", "cacophony", "defenestrate", "ebullient", "farrago", "gallimaufry",
    "hiraeth", "ineffable", "jentacular", "kakistocracy", "lachrymose", "mellifluous", "nudiustertian",
    "obfuscate", "petrichor", "quixotic", "rigmarole", "sesquipedalian", "tintinnabulation",
    "ultracrepidarian", "vellichor", "widdershins", "xenial", "yonder", "zephyr",
)

# Semantic opposites per attribute. Where a value has no natural opposite (e.g. "center"), the
# farthest value of the same set stands in; the pairing is symmetric so a double swap is identity.
OPPOSITES: dict[str, dict[str, str]] = {
    "size": {"large": "small", "small": "large", "medium": "tiny", "tiny": "medium"},
    "number": {"one": "many"},
    "location": {
        "left": "right", "right": "left", "top": "bottom", "bottom": "top",
        "top left": "bottom right", "bottom right": "top left",
        "top right": "bottom left", "bottom left": "top right",
        "center": "top left",
    },
    "color": {"white": "black", "black": "white", "pink": "brown", "brown": "pink", "yellow": "purple",
              "purple": "yellow", "red": "green", "green": "red", "orange": "blue", "blue": "orange",
              "tan": "gray", "gray": "tan"},
    "shape": {"round": "triangular", "circle": "triangular", "triangular": "round", "oval": "rectangular",
              "rectangular": "oval", "irregular": "round"},
    "tumor_type": {"benign": "malignant", "malignant": "benign"},
    "regularity": {"regular": "irregular", "irregular": "regular"},
    "sex": {"male": "female", "female": "male"},
    "view": {"two-chamber": "four-chamber", "four-chamber": "two-chamber", "frontal": "lateral",
             "lateral": "frontal"},
    "cycle": {"diastole": "systole", "systole": "diastole"},
    "quality": {"good": "poor", "poor": "good", "medium": "poor"},
}


class PerturbationError(ValueError):
    """A perturbation that this prompt cannot take; the message says why."""


@dataclass(frozen=True)
class Perturbation:
    kind: str  # one of KINDS
    attribute: str | None = None  # the attribute to replace; None for class_only

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PerturbationError(f"unknown perturbation {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.kind == "class_only" and self.attribute is not None:
            raise PerturbationError("class_only perturbation takes no attribute: it replaces the whole prompt")
        if self.kind != "class_only" and self.attribute is None:
            raise PerturbationError(f"{self.kind} perturbation needs the attribute to replace")


def opposite(attribute: str, value: str) -> str:
    """The opposite of a value; comma-joined values (one per component) are swapped one by one."""
    table = OPPOSITES.get(attribute)
    if table is None:
        raise PerturbationError(f"no opposites are defined for attribute {attribute!r} "
                                f"(defined for: {', '.join(OPPOSITES)})")
    if attribute == "number":  # one becomes many; any other count becomes one
        return table.get(value, "one")
    parts = [p.strip() for p in value.split(",")]
    missing = [p for p in parts if p not in table]
    if missing:
        raise PerturbationError(f"no opposite for {attribute} value(s) {', '.join(map(repr, missing))}; "
                                f"known values: {', '.join(table)}")
    return ", ".join(table[p] for p in parts)


def perturbed_attributes(family: str, prompt_type: str, attributes: Mapping[str, str], perturbation: Perturbation,
                         sample_key: str) -> dict[str, str]:
    """The attributes with the targeted one replaced, after checking the prompt shows it."""
    shown = TEMPLATE_ATTRIBUTES[family][prompt_type]
    name = perturbation.attribute
    if family == "busi" and attributes.get("tumor_type") == "normal":
        raise PerturbationError(f"sample {sample_key!r} is a normal BUSI image: its prompt only says there is "
                                "no tumor, so it has no attribute to perturb")
    if name not in shown:
        raise PerturbationError(f"{family} prompt type {prompt_type} shows {', '.join(shown) or 'no attribute'}; "
                                f"it has no {name!r} to perturb")
    if name not in attributes:
        raise PerturbationError(f"sample {sample_key!r} has no value for attribute {name!r}")
    if perturbation.kind == "opposite":
        value = opposite(name, attributes[name])
    else:
        value = random.Random(zlib.crc32(f"{name}:{sample_key}".encode())).choice(UNCOMMON_WORDS)
    return {**attributes, name: value}


def perturb(family: str, prompt_type: str, attributes: Mapping[str, str], perturbation: Perturbation,
            sample_key: str) -> list[str]:
    """The perturbed prompt strings of one sample (a list, like every rendered prompt type)."""
    if perturbation.kind == "class_only":
        return render(family, attributes, ["p1"])["p1"]
    variants = [attributes]
    if "description" in TEMPLATE_ATTRIBUTES[family][prompt_type] and "description" not in attributes:
        # Descriptions belong to the original class: fix each one before the class name may change.
        variants = [{**attributes, "description": d} for d in CLASS_DESCRIPTIONS[attributes["class_name"]]]
    return [text for variant in variants
            for text in render(family, perturbed_attributes(family, prompt_type, variant, perturbation, sample_key),
                               [prompt_type])[prompt_type]]


def parse_perturbation(text: str | None) -> Perturbation | None:
    """``opposite:location``, ``random_word:size``, ``class_only``; None or "" for no perturbation."""
    if not text:
        return None
    kind, _, attribute = text.partition(":")
    return Perturbation(kind, attribute or None)
