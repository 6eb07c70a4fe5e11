"""Perturbations change exactly the targeted attribute and nothing else, or refuse clearly."""

import difflib

import pytest

from prompts.perturb import OPPOSITES, UNCOMMON_WORDS, Perturbation, PerturbationError, opposite, perturb
from prompts.templates import TEMPLATE_ATTRIBUTES, render

POLYP = {"class_name": "polyp", "shape": "round", "color": "pink", "size": "small, medium", "number": "two",
         "location": "top left, right"}
CAMUS = {"class_name": "Left ventricular cavity", "view": "two-chamber", "cycle": "diastole", "sex": "female",
         "age": "fifty-six-year-old", "quality": "good", "shape": "oval"}


def changed_spans(before: str, after: str) -> list[tuple[str, str]]:
    """The (old, new) word runs that differ between two strings."""
    a, b = before.split(), after.split()
    return [(" ".join(a[i1:i2]), " ".join(b[j1:j2]))
            for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
            if op != "equal"]


@pytest.mark.parametrize("family,attributes", [("non_radiology", POLYP), ("camus", CAMUS)])
@pytest.mark.parametrize("kind", ["opposite", "random_word"])
def test_each_perturbation_changes_only_its_attribute(family, attributes, kind):
    checked = 0
    for prompt_type, shown in TEMPLATE_ATTRIBUTES[family].items():
        for name in shown:
            if name == "description" or (kind == "opposite" and name not in OPPOSITES):
                continue
            original = render(family, attributes, [prompt_type])[prompt_type]
            perturbed = perturb(family, prompt_type, attributes, Perturbation(kind, name), sample_key="s1")
            assert len(perturbed) == len(original)
            for before, after in zip(original, perturbed):
                spans = changed_spans(before, after)
                old_value = " ".join(attributes[name].replace(",", ", ").split())
                assert len(spans) == 1, (prompt_type, name, before, after)
                old, new = spans[0]
                assert old.rstrip(",.") in old_value or old_value in old, (prompt_type, name, old, new)
                if kind == "random_word":
                    assert new.rstrip(",.") in UNCOMMON_WORDS
            checked += 1
    assert checked >= 10


def test_opposites_swap_values_one_by_one():
    assert opposite("size", "small, medium") == "large, tiny"
    assert opposite("location", "top left, right") == "bottom right, left"
    assert opposite("number", "one") == "many" and opposite("number", "three") == "one"
    assert opposite("tumor_type", "benign") == "malignant"
    for attribute, table in OPPOSITES.items():
        if attribute not in ("number", "location", "quality", "shape"):
            assert all(table[table[v]] == v for v in table), attribute


def test_random_word_is_fixed_per_sample():
    p = Perturbation("random_word", "color")
    first = perturb("non_radiology", "p3", POLYP, p, sample_key="a")
    assert first == perturb("non_radiology", "p3", POLYP, p, sample_key="a")
    assert len({perturb("non_radiology", "p3", POLYP, p, sample_key=k)[0] for k in "abcdefgh"}) > 1


def test_class_only_gives_p1():
    assert perturb("non_radiology", "p6", POLYP, Perturbation("class_only"), "s") == ["polyp"]


def test_class_name_of_p7_keeps_the_original_descriptions():
    perturbed = perturb("non_radiology", "p7", POLYP, Perturbation("random_word", "class_name"), "s")
    assert len(perturbed) == 5
    original = render("non_radiology", POLYP, ["p7"])["p7"]
    for before, after in zip(original, perturbed):
        assert before.split(" which is ")[1] == after.split(" which is ")[1]
        assert after.split(" which is ")[0] in UNCOMMON_WORDS


def test_refusals_say_why():
    with pytest.raises(PerturbationError, match=r"prompt type p3 shows .*no 'location' to perturb"):
        perturb("non_radiology", "p3", POLYP, Perturbation("opposite", "location"), "s")
    with pytest.raises(PerturbationError, match="no opposite for color value.*'mauve'"):
        perturb("non_radiology", "p3", {**POLYP, "color": "mauve"}, Perturbation("opposite", "color"), "s")
    with pytest.raises(PerturbationError, match="normal BUSI image"):
        perturb("busi", "p2", {"class_name": "tumor", "tumor_type": "normal"}, Perturbation("opposite", "tumor_type"),
                "s")
    with pytest.raises(PerturbationError, match="unknown perturbation 'swap'"):
        Perturbation("swap", "size")
    with pytest.raises(PerturbationError, match="needs the attribute"):
        Perturbation("opposite")
