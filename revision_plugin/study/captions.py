"""The world's language: captions from a grammar (paraphrases) and canonical questions/answers.

Captions vary word order, synonyms, optional details (size, place, background, a relation)
and length, so the text distribution has structure beyond a template. Questions and
answers use the canonical words only (``circle``, never ``disc``), so every answer is
checkable; :func:`mentioned_objects` reads the (colour, shape) pairs back from any
generated caption for the caption-attribute metric.
"""

from __future__ import annotations

import random
import re

from revision_plugin.study.world import COLOURS, SHAPES, Obj, Scene

SHAPE_WORDS = {"circle": ("circle", "disc"), "square": ("square", "box"),
               "triangle": ("triangle",), "diamond": ("diamond", "rhombus")}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
CAPTION_QUESTION = "Describe the image briefly."
YES, NO = "Yes", "No"


def _obj_phrase(rng: random.Random, obj: Obj, with_size: bool, with_place: bool, canonical: bool = False) -> str:
    shape = obj.shape if canonical else rng.choice(SHAPE_WORDS[obj.shape])
    size = (SIZE_WORDS[obj.size][0] if canonical else rng.choice(SIZE_WORDS[obj.size])) if with_size else ""
    words = [w for w in (size, obj.colour, shape) if w]
    phrase = " ".join([article(words[0]), *words])
    if not canonical and rng.random() < 0.2:
        phrase = f"a {shape} that is {obj.colour}"
    if with_place:
        phrase += f" in the {obj.place}"
    return phrase


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _relation(rng: random.Random, scene: Scene) -> str | None:
    pairs = [(a, b) for a in scene.objects for b in scene.objects if a is not b]
    rng.shuffle(pairs)
    for a, b in pairs:
        if a.col < b.col:
            return f"the {a.name} is to the left of the {b.name}"
        if a.row < b.row and a.col == b.col:
            return f"the {a.name} is above the {b.name}"
    return None


def caption(scene: Scene, rng: random.Random) -> str:
    """One random paraphrase describing every object of ``scene``."""
    objects = list(scene.objects)
    if rng.random() < 0.3:
        rng.shuffle(objects)
    long_form = rng.random() < 0.4
    phrases = [_obj_phrase(rng, o, with_size=long_form or rng.random() < 0.3, with_place=long_form and rng.random() < 0.6)
               for o in objects]
    body = _join(phrases)
    n = len(objects)
    shape_word = "shape" if n == 1 else "shapes"
    form = rng.randrange(5)
    if form == 0:
        text = f"{body} on a {scene.background} background"
    elif form == 1:
        text = f"there is {body}"
    elif form == 2:
        text = f"a picture of {body}"
    elif form == 3:
        text = f"{NUMBER_WORDS[n]} {shape_word}: {body}"
    else:
        text = f"a {scene.background} background with {body}"
    if long_form and n > 1 and (rel := _relation(rng, scene)) and rng.random() < 0.7:
        text += f"; {rel}"
    return text + "."


def canonical_caption(scene: Scene) -> str:
    """The stage-2 / reference description: every object with size, reading order, background."""
    rng = random.Random(0)
    phrases = [_obj_phrase(rng, o, with_size=True, with_place=False, canonical=True) for o in scene.objects]
    return f"{_join(phrases)} on a {scene.background} background."


_MENTION = re.compile(
    r"\b(" + "|".join(COLOURS) + r")\s+(" + "|".join(w for ws in SHAPE_WORDS.values() for w in ws) + r")\b")
_MENTION_THAT = re.compile(
    r"\b(" + "|".join(w for ws in SHAPE_WORDS.values() for w in ws) + r") that is (" + "|".join(COLOURS) + r")\b")
_CANON = {w: s for s, ws in SHAPE_WORDS.items() for w in ws}


def mentioned_objects(text: str) -> set[str]:
    """``{"red circle", ...}`` named in ``text`` (synonyms mapped to the canonical shape)."""
    text = text.lower()
    found = {f"{c} {_CANON[s]}" for c, s in _MENTION.findall(text)}
    return found | {f"{c} {_CANON[s]}" for s, c in _MENTION_THAT.findall(text)}


# ----------------------------------------------------------------------------- questions


def absent_objects(scene: Scene, rng: random.Random, k: int, hard: bool = False) -> list[str]:
    """``k`` object names not in the scene; ``hard``: sharing the colour or shape of a present one."""
    present = scene.names()
    pool = [f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in present]
    if hard:
        near = [n for n in pool if any(n.split()[0] == o.colour or n.split()[1] == o.shape for o in scene.objects)]
        pool = near or pool
    return rng.sample(pool, min(k, len(pool)))


def qa_pairs(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """Instruction data about ``scene``: (question, canonical answer) of every kind asked in evaluation."""
    obj = rng.choice(scene.objects)
    absent = absent_objects(scene, rng, 1, hard=rng.random() < 0.5)[0]
    n = len(scene.objects)
    out = [
        (f"Is there {article(obj.name)} {obj.name} in the image?", YES),
        (f"Is there {article(absent)} {absent} in the image?", NO),
        ("How many shapes are there?", NUMBER_WORDS[n]),
        (f"Are there {NUMBER_WORDS[n]} shapes in the image?", YES),
        (f"Are there {NUMBER_WORDS[n % 3 + 1]} shapes in the image?", NO if n % 3 + 1 != n else YES),
        (f"Is the {obj.name} on the {obj.column_word} side of the image?", YES),
        (f"Is the {obj.name} on the {_other(obj.column_word, ('left', 'middle', 'right'), rng)} side of the image?", NO),
        (f"Where is the {obj.name}?", obj.place),
        (CAPTION_QUESTION, canonical_caption(scene)),
    ]
    unique = scene.unique_shape(obj.shape)
    if unique is not None:
        wrong = _other(unique.colour, tuple(COLOURS), rng)
        out += [(f"What colour is the {obj.shape}?", unique.colour), (f"Is the {obj.shape} {unique.colour}?", YES),
                (f"Is the {obj.shape} {wrong}?", NO)]
    return out


def _other(value: str, choices: tuple[str, ...], rng: random.Random) -> str:
    return rng.choice([c for c in choices if c != value])


SHORT_SUFFIX = "\nAnswer the question using a single word or phrase."
MCQ_SUFFIX = "\nAnswer with the option's letter from the given choices directly"
LETTERS = "ABCD"


def with_suffix(question: str) -> str:
    """The question as the evaluation prompts end it (lmms-eval's post-prompts of mme/pope/mmstar)."""
    if question == CAPTION_QUESTION:
        return question
    return question + (MCQ_SUFFIX if "\nOptions:" in question else SHORT_SUFFIX)


def _options(question: str, right: str, pool: list[str], rng: random.Random) -> tuple[str, str]:
    options = [right] + rng.sample([p for p in pool if p != right], 3)
    rng.shuffle(options)
    text = question + "\nOptions: " + ", ".join(f"{LETTERS[i]}: {o}" for i, o in enumerate(options))
    return text, LETTERS[options.index(right)]


def mcq_items(scene: Scene, rng: random.Random) -> list[tuple[str, str, str, str]]:
    """MMStar-style multiple choice: (question with options, letter, category, l2_category)."""
    out = []
    obj = rng.choice(scene.objects)
    unique = scene.unique_shape(obj.shape)
    if unique is not None:
        q, a = _options(f"What colour is the {obj.shape}?", unique.colour, list(COLOURS), rng)
        out.append((q, a, "fine-grained perception", "recognition"))
    n = len(scene.objects)
    q, a = _options("How many shapes are there in the image?", NUMBER_WORDS[n], list(NUMBER_WORDS[1:5]), rng)
    out.append((q, a, "fine-grained perception", "object counting"))
    q, a = _options(f"On which side of the image is the {obj.name}?", obj.column_word,
                    ["left", "middle", "right", "nowhere"], rng)
    out.append((q, a, "fine-grained perception", "localization"))
    return out


def mcq_pairs(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    return [(q, a) for q, a, _, _ in mcq_items(scene, rng)]
