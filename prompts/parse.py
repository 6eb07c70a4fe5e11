"""Template attributes read back from prompt strings, for datasets imported with the study's own prompts.

The ablation (`prompts.perturb`) re-renders a prompt from its attributes with one value changed, so a
dataset imported from the released annotations needs those attributes too. The templates give the
parser: every prompt type is rendered with a placeholder for each attribute, placeholders become
regex groups (an attribute's later appearances become back-references) and all of a row's prompt
types are matched at once, so P2-P4 pin the words that P5 alone would leave ambiguous ("one medium
yellow it is a round shape polyp"). A reading is accepted only when

- it is the only one: the shortest and the longest readings of every value agree, and
- rendering it gives back every prompt type of the row exactly, string for string;

otherwise `PromptParseError` says why, and the caller stores nothing: a wrong parse is never kept.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

from prompts.templates import CLASS_DESCRIPTIONS, PROMPT_TYPES, TEMPLATE_ATTRIBUTES, render

SEPARATOR = "\x1f"  # joins a row's prompt strings into one text; a value may not span two strings
_PLACEHOLDER = re.compile(r"[qQ]z(\w+?)zq")  # "Qz..." where the template capitalised the sentence

# Template branches that a placeholder cannot reach: values that change the words around them.
# Each is tried, and a row must read as exactly one of them.
VARIANTS: dict[str, tuple[dict[str, str], ...]] = {
    "non_radiology": ({}, {"size": ""}),  # no size word when every component is a speck
    # One tumour takes the singular; no shape drops "-shaped" from P6; a normal image has one sentence.
    "busi": ({}, {"number": "one"}, {"shape": ""}, {"number": "one", "shape": ""}, {"tumor_type": "normal"}),
    "camus": ({},),
    "chexlocalize": ({}, {"findings": ""}),  # no other findings: no "... are present." sentence
    "mimic": ({},),
}


class PromptParseError(ValueError):
    """Prompts that do not read back as their family's templates; the message says which and why."""

    def __init__(self, message: str, progress: int = 0):
        super().__init__(message)
        self.progress = progress  # how far the reading got: the most informative failure is reported


def parse_attributes(family: str, prompts: Mapping[str, Sequence[str]],
                     class_name: str | None = None) -> dict[str, str]:
    """The template attributes that render exactly `prompts` (p0..pN, each a list of strings).

    Uses every prompt type given; `class_name`, when given, must be the class the prompts name. The
    class's five descriptions (non-radiology P7-P9) are left out of the result, as `render` adds
    them itself; a single other description is kept as "description". Raises PromptParseError when
    no reading, or more than one, re-renders every given prompt type exactly.
    """
    if family not in PROMPT_TYPES:
        raise PromptParseError(f"unknown prompt family {family!r}; known: {', '.join(PROMPT_TYPES)}")
    texts = _checked(family, prompts)
    fixed = {} if class_name is None else {"class_name": class_name}
    readings: list[dict[str, str]] = []
    failures: list[PromptParseError] = []
    for variant in VARIANTS[family]:
        try:
            attributes = _read(family, texts, {**variant, **fixed}, keep=set(fixed))
        except PromptParseError as e:
            failures.append(e)
            continue
        if attributes not in readings:
            readings.append(attributes)
    if len(readings) == 1:
        return readings[0]
    if readings:
        raise PromptParseError(f"the prompts read as the {family} templates in {len(readings)} ways: "
                               + "; ".join(map(str, readings)))
    raise max(failures, key=lambda e: e.progress)


def _checked(family: str, prompts: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    known = PROMPT_TYPES[family]
    unknown = [t for t in prompts if t not in known]
    if unknown:
        raise PromptParseError(f"{family} has no prompt type {', '.join(map(str, unknown))}; it has {', '.join(known)}")
    texts = {t: prompts[t] for t in known if t in prompts}
    for prompt_type, strings in texts.items():
        if (isinstance(strings, str) or not strings
                or not all(isinstance(s, str) and SEPARATOR not in s for s in strings)):
            raise PromptParseError(f"{prompt_type} is {strings!r}; expected a non-empty list of strings")
    return {t: list(strings) for t, strings in texts.items()}


def _read(family: str, texts: dict[str, list[str]], fixed: dict[str, str], keep: set[str]) -> dict[str, str]:
    """The one reading of `texts` under the fixed values of one variant, verified by rendering it."""
    types = tuple(texts)
    templates = _templates(family, types, tuple(len(texts[t]) for t in types), tuple(sorted(fixed.items())))
    capital = _capitalises(family)
    joined = SEPARATOR.join(_lowered(s, capital) for t in types for s in texts[t])
    match = _pattern(templates, capital, greedy=False).fullmatch(joined)
    if match is None:
        raise _mismatch(family, texts, templates, capital)
    values = match.groupdict()
    longest = _pattern(templates, capital, greedy=True).fullmatch(joined).groupdict()
    if longest != values:
        name = next(n for n in values if values[n] != longest[n])
        raise PromptParseError(f"the {family} prompts leave {_shown_name(name)} ambiguous: {values[name]!r} or "
                               f"{longest[name]!r} (a row with more prompt types would settle it)", len(types) + 1)
    attributes = _with_descriptions(values, fixed, progress=len(types))
    try:
        rendered = render(family, attributes, types)
    except KeyError as e:  # e.g. a BUSI P1 alone does not say whether the image is normal
        raise PromptParseError(f"the prompts do not give every attribute their templates need: {e.args[0]}",
                               len(types)) from None
    if rendered != texts:
        wrong = next(t for t in types if rendered[t] != texts[t])
        raise PromptParseError(f"{wrong} {texts[wrong]!r} reads as {attributes}, which renders {rendered[wrong]!r}",
                               len(types))
    # A fixed value stays only where the prompts need it (a P1-only row says nothing of the size).
    needed = {n for n in fixed if n in keep or not _renders_without(family, attributes, n, types, rendered)}
    order = _attribute_names(family)
    return {n: attributes[n] for n in sorted(attributes, key=order.index) if n not in fixed or n in needed}


def _with_descriptions(values: dict[str, str], fixed: dict[str, str], progress: int) -> dict[str, str]:
    """Values with the per-string description groups folded into "description" (or left to the class)."""
    count = sum(1 for name in values if name.startswith("description_"))
    descriptions = tuple(values[f"description_{i}"] for i in range(count))
    attributes = {n: v for n, v in values.items() if not n.startswith("description_")} | fixed
    if not descriptions or descriptions == CLASS_DESCRIPTIONS.get(attributes.get("class_name", "")):
        return attributes
    if len(descriptions) == 1:
        return {**attributes, "description": descriptions[0]}
    raise PromptParseError(f"the {count} descriptions {list(descriptions)} are not the five of class "
                           f"{attributes.get('class_name')!r} (known for: {', '.join(CLASS_DESCRIPTIONS)})", progress)


def _renders_without(family: str, attributes: dict[str, str], name: str, types: tuple[str, ...],
                     rendered: dict[str, list[str]]) -> bool:
    try:
        return render(family, {n: v for n, v in attributes.items() if n != name}, types) == rendered
    except KeyError:
        return False


def _lowered(text: str, capital: bool) -> str:
    # Where the family capitalises its sentences, both sides are matched with a lower-case first
    # letter, so a value reads the same at the start of one sentence and inside another.
    return text[:1].lower() + text[1:] if capital else text


@functools.cache
def _attribute_names(family: str) -> list[str]:
    names: list[str] = []
    for shown in TEMPLATE_ATTRIBUTES[family].values():
        names += [n for n in shown if n not in names]
    return names


def _placeholders(family: str) -> dict[str, str]:
    return {name: f"qz{name}zq" for name in _attribute_names(family)}


@functools.cache
def _capitalises(family: str) -> bool:
    rendered = render(family, _placeholders(family))
    return any(text.startswith("Qz") for strings in rendered.values() for text in strings)


@functools.cache
def _templates(family: str, types: tuple[str, ...], counts: tuple[int, ...],
               fixed: tuple[tuple[str, str], ...]) -> tuple[tuple[str, ...], ...]:
    """Per prompt type, one placeholder string per released string (descriptions numbered by position)."""
    rendered = render(family, {**_placeholders(family), **dict(fixed)}, types)
    templates = []
    for position, (prompt_type, count) in enumerate(zip(types, counts)):
        strings = rendered[prompt_type]
        if len(strings) == 1 and "qzdescriptionzq" in strings[0]:
            # One string per class description; the i-th string of P7, P8 and P9 shares the i-th one.
            strings = [strings[0].replace("qzdescriptionzq", f"qzdescription_{i}zq") for i in range(count)]
        if len(strings) != count:
            given = ", ".join(f"{n}={v!r}" for n, v in fixed)
            raise PromptParseError(f"{prompt_type} has {count} string(s); the {family} template"
                                   f"{f' with {given}' if given else ''} gives {len(strings)}", position)
        templates.append(tuple(strings))
    return tuple(templates)


@functools.cache
def _pattern(templates: tuple[tuple[str, ...], ...], capital: bool, greedy: bool) -> re.Pattern:
    """One regex over the joined strings: an attribute's first appearance is a group, later ones
    back-references. Lazy groups give the shortest reading of each value in turn, greedy the longest."""
    defined: set[str] = set()
    value = "[^" + SEPARATOR + "]+" + ("" if greedy else "?")
    parts = []
    for strings in templates:
        for text in strings:
            text, pieces, start = _lowered(text, capital), [], 0
            for found in _PLACEHOLDER.finditer(text):
                name = found.group(1)
                pieces += [re.escape(text[start:found.start()]),
                           f"(?P={name})" if name in defined else f"(?P<{name}>{value})"]
                defined.add(name)
                start = found.end()
            parts.append("".join(pieces) + re.escape(text[start:]))
    return re.compile(SEPARATOR.join(parts))


def _shown_name(name: str) -> str:
    return "description" if name.startswith("description_") else name


def _mismatch(family: str, texts: dict[str, list[str]], templates, capital: bool) -> PromptParseError:
    """The first prompt type that no reading of it and the types before it matches."""
    types = tuple(texts)
    for k in range(len(types)):
        joined = SEPARATOR.join(_lowered(s, capital) for t in types[: k + 1] for s in texts[t])
        if _pattern(templates[: k + 1], capital, greedy=False).fullmatch(joined) is None:
            break
    shown = (_PLACEHOLDER.sub(lambda m: f"<{_shown_name(m.group(1))}>", s) for s in templates[k])
    template = " | ".join(dict.fromkeys(shown))  # P7-P9's strings differ only in their description
    earlier = f", given {', '.join(types[:k])}" if k else ""
    return PromptParseError(f"{types[k]} {texts[types[k]]!r} does not read as the {family} template "
                            f"{template!r}{earlier}", k)
