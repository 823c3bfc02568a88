"""The miniature world: seeded scenes of coloured shapes, drawn with PIL.

A :class:`Scene` is a background and one to ``max_objects`` :class:`Obj` (shape, colour,
size, a cell of a 3x3 grid, and a small pixel jitter inside the cell). Relations (left of,
above) follow from the cells. :func:`sample_scenes` draws scenes from a seeded generator;
:meth:`Scene.key` ignores the jitter, so two scenes with the same key are "the same scene"
for the disjointness of the study's roles (``splits.py``).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "green": (40, 165, 60), "blue": (40, 70, 220),
    "yellow": (235, 205, 30), "purple": (140, 50, 170), "orange": (240, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = ("small", "large")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250), "gray": (165, 165, 165), "black": (25, 25, 25), "beige": (230, 215, 180),
}
COLUMNS = ("left", "middle", "right")
ROWS = ("top", "middle", "bottom")


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    col: int  # 0..2, left to right
    row: int  # 0..2, top to bottom
    dx: int = 0  # jitter in pixels (not part of the scene's identity)
    dy: int = 0

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def column_word(self) -> str:
        return COLUMNS[self.col]

    @property
    def place(self) -> str:
        """``top left``, ``center``, ``bottom middle`` ..."""
        if self.col == 1 and self.row == 1:
            return "center"
        return f"{ROWS[self.row]} {COLUMNS[self.col]}"


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[Obj, ...]

    def key(self) -> tuple:
        return (self.background, tuple(sorted((o.shape, o.colour, o.size, o.col, o.row) for o in self.objects)))

    def names(self) -> set[str]:
        return {o.name for o in self.objects}

    def unique_shape(self, shape: str) -> Obj | None:
        """The only object of ``shape``, or None (questions about "the circle" need one)."""
        found = [o for o in self.objects if o.shape == shape]
        return found[0] if len(found) == 1 else None

    def to_json(self) -> dict:
        return {"background": self.background, "objects": [o.__dict__ for o in self.objects]}

    @classmethod
    def from_json(cls, raw: dict) -> Scene:
        return cls(raw["background"], tuple(Obj(**o) for o in raw["objects"]))


def sample_scene(rng: random.Random, max_objects: int = 3) -> Scene:
    """One scene: 1..max_objects objects in distinct cells, distinct (colour, shape) names."""
    count = rng.randint(1, max_objects)
    cells = rng.sample([(c, r) for c in range(3) for r in range(3)], count)
    objects, names = [], set()
    for col, row in cells:
        while True:
            shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
            if f"{colour} {shape}" not in names:
                break
        names.add(f"{colour} {shape}")
        objects.append(Obj(shape, colour, rng.choice(SIZES), col, row, rng.randint(-2, 2), rng.randint(-2, 2)))
    objects.sort(key=lambda o: (o.col, o.row))  # reading order, left to right
    return Scene(rng.choice(list(BACKGROUNDS)), tuple(objects))


def sample_scenes(n: int, seed: int, max_objects: int = 3, exclude: set | None = None) -> list[Scene]:
    """``n`` scenes with distinct keys, none of whose keys is in ``exclude`` (which is updated)."""
    rng = random.Random(seed)
    exclude = exclude if exclude is not None else set()
    scenes: list[Scene] = []
    attempts = 0
    while len(scenes) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"could not sample {n} distinct scenes (world too small?)")
        scene = sample_scene(rng, max_objects)
        if scene.key() in exclude:
            continue
        exclude.add(scene.key())
        scenes.append(scene)
    return scenes


def draw(scene: Scene, size: int = 64):
    """The scene as an RGB PIL image of ``size`` x ``size`` pixels (light noise on the background)."""
    from PIL import Image, ImageDraw

    base = BACKGROUNDS[scene.background]
    image = Image.new("RGB", (size, size), base)
    draw_ = ImageDraw.Draw(image)
    # a faint deterministic texture, so backgrounds are not flat colour fields
    rng = random.Random(zlib.crc32(repr(scene.key()).encode()))
    for _ in range(size // 2):
        x, y = rng.randrange(size), rng.randrange(size)
        shade = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in base)
        draw_.point((x, y), fill=shade)
    cell = size / 3
    for obj in scene.objects:
        half = cell * (0.45 if obj.size == "large" else 0.26)
        cx = (obj.col + 0.5) * cell + obj.dx * size / 64
        cy = (obj.row + 0.5) * cell + obj.dy * size / 64
        box = (cx - half, cy - half, cx + half, cy + half)
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw_.ellipse(box, fill=fill)
        elif obj.shape == "square":
            draw_.rectangle(box, fill=fill)
        elif obj.shape == "triangle":
            draw_.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
        else:
            draw_.polygon([(cx, cy - half), (cx + half, cy), (cx, cy + half), (cx - half, cy)], fill=fill)
    return image
