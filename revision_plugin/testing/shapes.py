"""The tiny world the tiny LLaVA is trained on: coloured shapes, their captions, and the
questions and answers about them."""

from __future__ import annotations

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (230, 200, 20)}
SHAPES = ("square", "circle", "triangle")
QUESTIONS = ("What colour is the shape?", "What shape is in the picture?", "Describe the image briefly.")


def caption_for(colour: str, shape: str) -> str:
    return f"a {colour} {shape} on a white background."


def answer_for(question: str, colour: str, shape: str) -> str:
    if question == QUESTIONS[0]:
        return f"The shape is {colour}."
    if question == QUESTIONS[1]:
        return f"It is a {shape}."
    return f"A {colour} {shape} on a white background."


def draw_shape(colour: str, shape: str, size: int = 48):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    box = (size // 6, size // 6, size - size // 6, size - size // 6)
    if shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    elif shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    else:
        draw.polygon([(size // 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=COLOURS[colour])
    return img
