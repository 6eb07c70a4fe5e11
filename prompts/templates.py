"""Prompt templates of every dataset family of the study (paper, Appendix G and Table 9).

A prompt is a pure function of a few named attribute values (`TEMPLATE_ATTRIBUTES`), so a caller can
render a sample's prompts, replace one value and render again: that is how the ablation perturbs
prompts without touching anything else. Where the released annotations and the paper's text differ,
the released strings win, because those are what the study's models were trained on:

- non-radiology: "polyp which is ..." and "located in top left of the image" (the appendix prints
  "polyp, which is" and "in the top left"); polyp descriptions keep their released misspellings;
- CAMUS: "at end of the diastole cycle" and the age always in words after "a", even
  "a eighty-four-year-old"; the appendix prints "at the end of" and once "a 40-year-old";
- BUSI: every sentence ends with a full stop, which the appendix omits (study's released BUSI file).

CheXlocalize and MIMIC-CXR have no released annotations; their templates follow Appendix G.2.1 and
Table 8 word for word.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

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


def _prompt_types(last: int) -> tuple[str, ...]:
    return tuple(f"p{level}" for level in range(last + 1))


# p0 is the empty prompt of every family; the last type is the richest the study used.
PROMPT_TYPES: dict[str, tuple[str, ...]] = {
    "non_radiology": _prompt_types(9),  # Kvasir, ClinicDB, BKAI, CVC-300, ColonDB, ETIS, ISIC, DFU
    "busi": _prompt_types(6),
    "camus": _prompt_types(7),
    "chexlocalize": _prompt_types(6),
    "mimic": _prompt_types(1),  # MIMIC-CXR lungs: p1 is the radiology report itself (Table 8)
}
FAMILIES = tuple(PROMPT_TYPES)
NON_RADIOLOGY_PROMPT_TYPES = PROMPT_TYPES["non_radiology"]

# The attribute values each prompt type shows, in the order they appear in its text. They are the
# paper's a1..a14 (Table 9) under explanatory names, plus BUSI's "regularity" (the word of the
# second BUSI alternative, standing where the tumour type stands in the first) and MIMIC's report.
# Table 9 leaves "number" out of non-radiology P6; Appendix G.1 and the released prompts have it.
_NON_RADIOLOGY_P5 = ("number", "size", "color", "shape", "class_name")
_CAMUS_P6 = ("class_name", "view", "cycle", "age", "sex", "quality")
TEMPLATE_ATTRIBUTES: dict[str, dict[str, tuple[str, ...]]] = {
    "non_radiology": {
        "p0": (),
        "p1": ("class_name",),
        "p2": ("shape", "class_name"),
        "p3": ("color", "shape", "class_name"),
        "p4": ("size", "color", "shape", "class_name"),
        "p5": _NON_RADIOLOGY_P5,
        "p6": (*_NON_RADIOLOGY_P5, "location"),
        "p7": ("class_name", "description"),
        "p8": (*_NON_RADIOLOGY_P5, "description"),
        "p9": (*_NON_RADIOLOGY_P5, "description", "location"),
    },
    # What a tumour image's prompts show; a normal image shows only that there is no class_name.
    "busi": {
        "p0": (),
        "p1": ("class_name",),
        "p2": ("tumor_type", "regularity", "class_name"),
        "p3": ("number", "tumor_type", "regularity", "class_name"),
        "p4": ("number", "size", "tumor_type", "regularity", "class_name"),
        "p5": ("number", "size", "tumor_type", "regularity", "class_name", "location"),
        "p6": ("number", "size", "shape", "tumor_type", "regularity", "class_name", "location"),
    },
    "camus": {
        "p0": (),
        "p1": ("class_name",),
        "p2": ("class_name", "view"),
        "p3": ("class_name", "view", "cycle"),
        "p4": ("class_name", "view", "cycle", "sex"),
        "p5": ("class_name", "view", "cycle", "age", "sex"),
        "p6": _CAMUS_P6,
        "p7": ("class_name", "shape", *_CAMUS_P6[1:]),
    },
    "chexlocalize": {
        "p0": (),
        "p1": ("class_name",),
        "p2": ("class_name", "view"),
        "p3": ("class_name", "shape", "view"),
        "p4": ("class_name", "shape", "location", "view"),
        "p5": ("class_name", "shape", "location", "view", "findings"),
        "p6": ("class_name", "findings"),
    },
    "mimic": {
        "p0": (),
        "p1": ("report",),
    },
}


class AttributeReader:
    """The attribute values of one prompt type being rendered.

    Reads go through here so that a missing value is reported with the family and prompt type that
    needed it, which is what a caller fixing its attribute dict wants to know.
    """

    def __init__(self, family: str, prompt_type: str, attributes: Mapping[str, str]) -> None:
        self.family = family
        self.prompt_type = prompt_type
        self._attributes = attributes

    def __getitem__(self, name: str) -> str:
        try:
            return self._attributes[name]
        except KeyError:
            raise self.missing(name) from None

    def get(self, name: str) -> str | None:
        return self._attributes.get(name)

    def missing(self, name: str, reason: str = "") -> KeyError:
        given = ", ".join(sorted(self._attributes)) or "none"
        return KeyError(
            f"{self.family} prompt type {self.prompt_type} needs attribute {name!r}"
            f"{reason} (attributes given: {given})"
        )


def _words(*parts: str) -> str:
    # An empty attribute (e.g. no size for a mask of specks) must not leave a double space.
    return " ".join(part for part in parts if part)


def _capitalised(sentence: str) -> str:
    # First letter only: str.capitalize() would also lower-case the rest of a perturbed value.
    return sentence[:1].upper() + sentence[1:]


def _class_descriptions(a: AttributeReader) -> tuple[str, ...]:
    """One given description, else the study's five for the class (P7-P9 offer all five)."""
    given = a.get("description")
    if given is not None:
        return (given,)
    class_name = a["class_name"]
    if class_name not in CLASS_DESCRIPTIONS:
        known = ", ".join(sorted(CLASS_DESCRIPTIONS))
        raise a.missing("description", f": no descriptions for class {class_name!r} (known: {known})")
    return CLASS_DESCRIPTIONS[class_name]


def _non_radiology(a: AttributeReader, level: int) -> list[str]:
    class_name = a["class_name"]
    if level == 1:
        return [class_name]
    if level == 7:
        return [f"{class_name} which is {d}" for d in _class_descriptions(a)]
    # P2-P5 each put one more word group in front of the last; P6, P8 and P9 extend P5.
    in_front = ("shape", "color", "size", "number")[: min(level - 1, 4)]
    described = _words(*(a[name] for name in reversed(in_front)), class_name)
    if level <= 5:
        return [described]
    if level == 6:
        return [f"{described}, located in {a['location']} of the image"]
    descriptions = _class_descriptions(a)
    if level == 8:
        return [f"{described} which is {d}" for d in descriptions]
    return [f"{described} which is {d} located in {a['location']} of the image" for d in descriptions]


def _busi(a: AttributeReader, level: int) -> list[str]:
    class_name = a["class_name"]
    ending = "in the breast ultrasound image."
    if a["tumor_type"] == "normal":
        # The study gave normal images this one sentence for every prompt type.
        return [f"No {class_name} {ending}"]
    if level == 1:
        return [_capitalised(f"{class_name} {ending}")]
    number = a["number"] if level >= 3 else ""
    noun = class_name if number in ("", "one") else f"{class_name}s"
    size = a["size"] if level >= 4 else ""
    place = f"at the {a['location']} " if level >= 5 else ""
    shape = f"{a['shape']}-shaped" if level >= 6 and a["shape"] else ""
    # Two alternatives: the tumour type, or the regularity that stands for it. Once the shape
    # brings its own "-shaped", the regularity drops it ("oval-shaped regular tumor").
    regularity = a["regularity"] if shape else f"{a['regularity']}-shaped"
    by_type = _words(number, size, shape, a["tumor_type"], noun)
    by_regularity = _words(number, size, shape, regularity, noun)
    return [_capitalised(f"{phrase} {place}{ending}") for phrase in (by_type, by_regularity)]


# The study alternated two endings of every CAMUS prompt; the rest of the sentence is shared.
CAMUS_SETTINGS = ("of the heart", "in the cardiac ultrasound")


def _camus(a: AttributeReader, level: int) -> list[str]:
    subject = a["class_name"]
    if level >= 7:
        subject += f" of {a['shape']} shape"
    if level >= 2:
        subject += f" in {a['view']} view"
    details = ""
    if level >= 3:
        details += f" at end of the {a['cycle']} cycle"
    if level == 4:
        details += f" of a {a['sex']}"
    if level >= 5:
        details += f" of a {a['age']} {a['sex']}"
    if level >= 6:
        details += f" with {a['quality']} image quality"
    return [f"{subject} {setting}{details}." for setting in CAMUS_SETTINGS]


def _chexlocalize(a: AttributeReader, level: int) -> list[str]:
    finding = a["class_name"]
    # "chest" in P1 but "Chest" elsewhere, as Appendix G.2.1 prints them.
    if level == 1:
        return [f"{finding} in a chest Xray."]
    if level == 6:
        return [_with_findings(f"{finding} in a Chest Xray.", a["findings"])]
    if level == 2:
        return [f"{finding} in the {a['view']} view of a Chest Xray."]
    if level == 3:
        return [f"{finding} of shape {a['shape']} in the {a['view']} view of a Chest Xray."]
    located = (
        f"{finding} of shape {a['shape']}, and located in {a['location']}"
        f" of the {a['view']} view of a Chest Xray."
    )
    return [located if level == 4 else _with_findings(located, a["findings"])]


def _with_findings(sentence: str, findings: str) -> str:
    # Without other positive findings the appendix's "... are present." would have no subject; the
    # study does not say what it wrote then, so the sentence is left out.
    return f"{sentence} {findings} are present." if findings else sentence


def _mimic(a: AttributeReader, level: int) -> list[str]:
    return [a["report"]]


_RENDERERS: dict[str, Callable[[AttributeReader, int], list[str]]] = {
    "non_radiology": _non_radiology,
    "busi": _busi,
    "camus": _camus,
    "chexlocalize": _chexlocalize,
    "mimic": _mimic,
}


def render(
    family: str,
    attributes: Mapping[str, str],
    prompt_types: Iterable[str] | None = None,
) -> dict[str, list[str]]:
    """Every prompt type of `family` (or only `prompt_types`) for one sample, each a list of strings.

    Lists hold the study's alternatives: five class descriptions for non-radiology P7-P9 (one if
    `attributes` gives a "description"), two templates for CAMUS P1-P7 and BUSI P2-P6; every other
    type, and all of a normal BUSI image, is a list of one. p0 is [""]. The result depends on
    nothing but the arguments. Raises KeyError naming family, prompt type and attribute when a
    prompt type needs an attribute that `attributes` lacks, or for an unknown family or type.
    """
    if family not in _RENDERERS:
        raise KeyError(f"unknown prompt family {family!r}; known: {', '.join(FAMILIES)}")
    known_types = PROMPT_TYPES[family]
    wanted = known_types if prompt_types is None else tuple(prompt_types)
    unknown = [prompt_type for prompt_type in wanted if prompt_type not in known_types]
    if unknown:
        raise KeyError(f"{family} has no prompt type {', '.join(unknown)}; it has {', '.join(known_types)}")
    renderer = _RENDERERS[family]
    return {
        prompt_type: [""]
        if prompt_type == "p0"
        else renderer(AttributeReader(family, prompt_type, attributes), int(prompt_type[1:]))
        for prompt_type in wanted
    }


def render_non_radiology(
    class_name: str, shape: str, color: str, size: str, number: str, location: str
) -> dict[str, list[str]]:
    """`render("non_radiology", ...)` from positional mask and VQA words (all five descriptions)."""
    return render("non_radiology", dict(class_name=class_name, shape=shape, color=color, size=size,
                                        number=number, location=location))
