"""Template attributes from dataset metadata (the string maps stored with each shard row).

Shards keep the datasets' own codes (CAMUS "2CH", "ED", "F", "56", "Good"; BUSI "benign"), so
that nothing is lost at ingest; prompts want the words the study wrote ("two-chamber", "diastole",
"female", "fifty-six-year-old", "good"). The spellings are those of the released CAMUS prompts.
Attributes taken from masks and images (number, size, location, shape, colour) come from
`prompts.attributes`; a caller merges both dicts before `prompts.templates.render`.

Every function raises KeyError naming the metadata key that is missing and ValueError naming the
key whose value is not one it knows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from prompts.attributes import NUMBER_WORDS

# Label values of the CAMUS label maps, named as the released prompts name the structures.
CAMUS_STRUCTURES = {"1": "Left ventricular cavity", "2": "Myocardium", "3": "Left atrium cavity"}
CAMUS_VIEWS = {"2CH": "two-chamber", "4CH": "four-chamber"}
CAMUS_PHASES = {"ED": "diastole", "ES": "systole"}  # end-diastole / end-systole frames
CAMUS_SEXES = {"F": "female", "M": "male"}
CAMUS_QUALITIES = ("good", "medium", "poor")  # Info_*.cfg writes them capitalised

# The study tied the regularity word to the tumour type (benign: regular-shaped, malignant:
# irregular-shaped); it is a second wording of the same fact, not a reading of the mask.
BUSI_REGULARITY = {"benign": "regular", "malignant": "irregular"}
BUSI_TUMOR_TYPES = (*BUSI_REGULARITY, "normal")
BUSI_CLASS_NAME = "tumor"

# The ten findings CheXlocalize segments, spelled as the paper's prompts spell them.
CHEXLOCALIZE_FINDINGS = (
    "Airspace Opacity", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
    "Enlarged Cardiomediastinum", "Lung Lesion", "Pleural Effusion", "Pneumothorax", "Support Devices",
)
# CheXpert's fourteen labels in its own column order, which is the order of the paper's example
# ("Enlarged Cardiomediastinum, Cardiomegaly, Lung Opacity, ..."): the prompt lists positive
# findings in this order whatever order ingest stored them in.
CHEXPERT_OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
CHEXLOCALIZE_VIEWS = ("frontal", "lateral")

_TENS_WORDS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_in_words(n: int) -> str:
    """English words for 0 <= n < 1000 as num2words writes them: "fifty-six", "one hundred and two"."""
    if not 0 <= n < 1000:
        raise ValueError(f"number_in_words takes 0..999, not {n}")
    if n < 20:
        return NUMBER_WORDS[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS_WORDS[tens] + (f"-{NUMBER_WORDS[ones]}" if ones else "")
    hundreds, rest = divmod(n, 100)
    return f"{NUMBER_WORDS[hundreds]} hundred" + (f" and {number_in_words(rest)}" if rest else "")


def age_in_words(age: int | str) -> str:
    """An age in years as the released CAMUS prompts write it: 56 -> "fifty-six-year-old"."""
    text = str(age).strip()
    if not text.isdigit():
        raise ValueError(f"age must be a whole number of years, not {age!r}")
    return f"{number_in_words(int(text))}-year-old"


def _value(dataset: str, metadata: Mapping[str, str], key: str) -> str:
    try:
        return metadata[key]
    except KeyError:
        present = ", ".join(sorted(metadata)) or "none"
        raise KeyError(f"{dataset} metadata has no {key!r} (keys present: {present})") from None


def _word(dataset: str, metadata: Mapping[str, str], key: str, words: Mapping[str, str]) -> str:
    """The prompt word for a coded value; codes are matched without regard to case or spaces."""
    value = _value(dataset, metadata, key)
    by_code = {code.lower(): word for code, word in words.items()}
    by_code.update({word.lower(): word for word in words.values()})  # already a word: keep it
    try:
        return by_code[value.strip().lower()]
    except KeyError:
        raise ValueError(
            f"{dataset} metadata {key!r} is {value!r}; expected one of {', '.join(words)}"
        ) from None


def camus_attributes(metadata: Mapping[str, str]) -> dict[str, str]:
    """CAMUS structure, view, cycle, sex, age and image quality as template attributes.

    Keys: "label" (1, 2, 3 of the label map), "view" (2CH, 4CH), "phase" (ED, ES), "sex" (F, M),
    "age" (whole years), "image_quality" (Good, Medium, Poor), as the CAMUS files give them.
    """
    return {
        "class_name": _word("CAMUS", metadata, "label", CAMUS_STRUCTURES),
        "view": _word("CAMUS", metadata, "view", CAMUS_VIEWS),
        "cycle": _word("CAMUS", metadata, "phase", CAMUS_PHASES),
        "sex": _word("CAMUS", metadata, "sex", CAMUS_SEXES),
        "age": _age(metadata),
        "quality": _word("CAMUS", metadata, "image_quality", {q: q for q in CAMUS_QUALITIES}),
    }


def _age(metadata: Mapping[str, str]) -> str:
    value = _value("CAMUS", metadata, "age")
    try:
        return age_in_words(value)
    except ValueError as error:
        raise ValueError(f"CAMUS metadata 'age' is {value!r}: {error}") from None


def busi_attributes(metadata: Mapping[str, str]) -> dict[str, str]:
    """BUSI class, tumour type and regularity; key "tumor_type" (benign, malignant, normal).

    A normal image gets no regularity: its prompts only say that there is no tumour.
    """
    tumor_type = _word("BUSI", metadata, "tumor_type", {t: t for t in BUSI_TUMOR_TYPES})
    attributes = {"class_name": BUSI_CLASS_NAME, "tumor_type": tumor_type}
    if tumor_type in BUSI_REGULARITY:
        attributes["regularity"] = BUSI_REGULARITY[tumor_type]
    return attributes


def _observation_name(text: str) -> str:
    # "airspace_opacity", "Airspace Opacity" and "airspace  opacity" all name one finding.
    return " ".join(text.replace("_", " ").split()).lower()


def chexlocalize_attributes(metadata: Mapping[str, str]) -> dict[str, str]:
    """CheXlocalize finding, view and the image's other positive findings.

    Keys: "finding" (one of CHEXLOCALIZE_FINDINGS, or its mask-file form "airspace_opacity"),
    "view" (frontal, lateral) and "positive_findings" (CheXpert labels positive for the image,
    separated by commas, semicolons or bars; may be empty). The finding itself is left out of
    "findings", which lists the rest comma-joined in CheXpert's label order.
    """
    raw_finding = _value("CheXlocalize", metadata, "finding")
    finding = {_observation_name(name): name for name in CHEXLOCALIZE_FINDINGS}.get(_observation_name(raw_finding))
    if finding is None:
        raise ValueError(
            f"CheXlocalize metadata 'finding' is {raw_finding!r}; expected one of {', '.join(CHEXLOCALIZE_FINDINGS)}"
        )
    observations_by_name = {_observation_name(name): name for name in CHEXPERT_OBSERVATIONS}
    positives = set()
    for part in re.split(r"[,;|]", _value("CheXlocalize", metadata, "positive_findings")):
        if not part.strip():
            continue
        name = observations_by_name.get(_observation_name(part))
        if name is None:
            raise ValueError(
                f"CheXlocalize metadata 'positive_findings' names {part.strip()!r}, not a CheXpert label"
                f" ({', '.join(CHEXPERT_OBSERVATIONS)})"
            )
        positives.add(name)
    others = [name for name in CHEXPERT_OBSERVATIONS if name in positives and name != finding]
    return {
        "class_name": finding,
        "view": _word("CheXlocalize", metadata, "view", {v: v for v in CHEXLOCALIZE_VIEWS}),
        "findings": ", ".join(others),
    }


def mimic_attributes(metadata: Mapping[str, str]) -> dict[str, str]:
    """The MIMIC-CXR report (key "report"), kept verbatim: the study used it as P1 unchanged."""
    report = _value("MIMIC-CXR", metadata, "report")
    if not report.strip():
        raise ValueError("MIMIC-CXR metadata 'report' is empty; P1 would say nothing")
    return {"report": report}


def _no_metadata_attributes(metadata: Mapping[str, str]) -> dict[str, str]:
    # Non-radiology prompts take everything from the class, the mask and the image.
    return {}


_CONVERTERS: dict[str, Callable[[Mapping[str, str]], dict[str, str]]] = {
    "non_radiology": _no_metadata_attributes,
    "busi": busi_attributes,
    "camus": camus_attributes,
    "chexlocalize": chexlocalize_attributes,
    "mimic": mimic_attributes,
}


def metadata_attributes(family: str, metadata: Mapping[str, str]) -> dict[str, str]:
    """The template attributes that a row's metadata gives for a prompt family of `templates`."""
    try:
        converter = _CONVERTERS[family]
    except KeyError:
        raise KeyError(f"unknown prompt family {family!r}; known: {', '.join(_CONVERTERS)}") from None
    return converter(metadata)


# The attribute values a sample's prompts were rendered from travel in its shard metadata under
# this prefix, so evaluation can re-render them with one value changed (prompts.perturb).
ATTRIBUTE_PREFIX = "attr."


def store_attributes(attributes: Mapping[str, str]) -> dict[str, str]:
    """Metadata entries that record template attributes."""
    return {f"{ATTRIBUTE_PREFIX}{name}": value for name, value in attributes.items()}


def stored_attributes(metadata: Mapping[str, str]) -> dict[str, str]:
    """The template attributes recorded in a sample's metadata (empty if none were)."""
    return {k.removeprefix(ATTRIBUTE_PREFIX): v for k, v in metadata.items() if k.startswith(ATTRIBUTE_PREFIX)}
