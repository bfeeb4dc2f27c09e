"""28x28 grayscale OOD sets that no default, threshold or rule of fevae was ever chosen on, in three batches.

usage: python scripts/holdout_sets.py OUT_DIR [--batch 1|2|3] [--n N] [--seed S]

Writes OUT_DIR/<set>.npy (uint8 [N, 28, 28]) for the batch's sets from data that ships inside the declared
dependencies, so it needs no download and gives the same bytes on every machine. Batch 1
(sklearn_digits, glyphs, shapes, photo_patches; registered 2026-12-06):

* sklearn_digits: scikit-learn's 1,797 UCI handwritten digits (8x8, 17 grey levels), upscaled to 20x20 and
  centred in 28x28 like MNIST (near OOD: digits again, another hand and resolution).
* glyphs: letters A-Z / a-z in Pillow's bundled font at random size, rotation and position (near OOD,
  printed characters; EMNIST-like without the download).
* shapes: one to three random ellipses, rectangles, triangles or lines, filled or outlined, random grey.
* photo_patches: random square crops (28-112 px) of scikit-learn's two sample photographs, grey, resized
  to 28x28 (far OOD: natural textures).

Batch 2 (font_digits, scribbles, gratings, julia; registered 2026-12-07, after batch 1 had been looked at and
the recommendation rule's calibration check corrected, to test the corrected rule on images nobody has seen):

* font_digits: digits 0-9 in matplotlib's bundled TrueType fonts (DejaVu Sans/Serif/Mono and their bold and
  oblique faces, STIX, Computer Modern) at random size, rotation and position (near OOD: printed digits).
* scribbles: one to three random quadratic Bezier strokes, 1-3 px wide (pen strokes that are no digit).
* gratings: a sinusoidal grating at random orientation, period (3-14 px), phase and contrast, full field or in
  a Gaussian window (far OOD: periodic synthetic patterns).
* julia: escape-time images of the Julia set of a random c near the Mandelbrot set's boundary, random zoom and
  centre (far OOD: fractal structure).

Batch 3 (symbols, pictograms, voronoi, automata; registered 2026-12-07, after batch 2 had been looked at, with no
change to any detector or to the rule since batch 2: a replication of batch 2's test on new images):

* symbols: Greek letters and mathematical signs in matplotlib's DejaVu and STIX fonts at random size, rotation
  and position (near OOD: printed symbols that are neither digits nor Latin letters).
* pictograms: DejaVu Sans's pictographic symbols (chess pieces, card suits, weather, dice, stars, flowers,
  arrows, dingbats) at random size, rotation and position (near OOD: object icons, silhouettes like garments').
* voronoi: Voronoi mosaics of 4-40 random sites, each cell one random grey, half with dark cell borders (far
  OOD: piecewise-constant textures).
* automata: space-time diagrams of an elementary cellular automaton with a chaotic or complex rule, from a
  random or single-cell start, cells of 1-2 px (far OOD: binary structured textures).

Each batch was registered (this file committed) before any score was computed on it: see
docs/results.md#held-out-ood-sets. Add them to a run with
`+data.ood_sets.glyphs={path: OUT_DIR/glyphs.npy, eval_split: {val: 200, test: 1500}}` (scripts/headline_cpu.sh).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SETS = ("sklearn_digits", "glyphs", "shapes", "photo_patches")
SETS2 = ("font_digits", "scribbles", "gratings", "julia")
SETS3 = ("symbols", "pictograms", "voronoi", "automata")
BATCHES = {1: SETS, 2: SETS2, 3: SETS3}
#: matplotlib's bundled fonts that have the digits 0-9 (mpl-data/fonts/ttf)
DIGIT_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
               "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf",
               "STIXGeneralItalic.ttf", "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: batch 3's characters: Greek letters and mathematical signs, and pictographic symbols (matplotlib's DejaVu fonts)
SYMBOLS = "αβγδεζηθικλμνξπρστυφχψωΓΔΘΛΞΠΣΦΨΩ∑∏∫∂∇√∞≈≠≤≥±×÷∀∃∈∉∩∪⊂⊃⊕⊗∧∨¬∴∵∝∠"
PICTOGRAMS = ("♔♕♖♗♘♙♚♛♜♝♞♟♠♡♢♣♤♥♦♧☀☁☂☃☄★☆☎☏☕☘☠☢☣☤☥☦☪☮☯☸☹☺☻☼☽☾♨♩♪♫♬⚀⚁⚂⚃⚄⚅⚐⚑⚒⚓⚔⚕⚖⚗⚘⚙⚛⚜⚠⚡"
              "✁✂✃✄✆✇✈✉✌✍✎✏✑✒✓✔✕✖✗✘✙✚✛✜✝✞✟✠✡✢✣✤✥✦✧✩✪✫✬✭✮✯✰✱✲✳✴✵✶✷✸✹✺✻✼✽✾✿❀❁❂❃❄❅❆❇❈❉❊❋❍❏❐❑❒❖❘❙❚❤❥❦❧"
              "➔➘➙➚➛➜➝➞➟➠➡➢➣➤➥➦➧➨➩➪➫➬➭➮➯➱➲➳➴➵➶➷➸➹➺➻➼➽➾")
SYMBOL_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf", "STIXGeneral.ttf",
                "STIXGeneralBol.ttf")
PICTOGRAM_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf")
#: elementary cellular automata with chaotic or complex space-time diagrams (Wolfram's classes 3 and 4)
AUTOMATA_RULES = (18, 22, 30, 45, 54, 60, 73, 75, 86, 89, 90, 105, 106, 110, 122, 126, 146, 150, 182)


def sklearn_digits(n: int, rng: np.random.Generator) -> np.ndarray:
    from sklearn.datasets import load_digits

    digits = load_digits().images  # [1797, 8, 8] in 0..16
    out = np.zeros((min(n, len(digits)), 28, 28), np.uint8)
    for i, d in enumerate(digits[: len(out)]):
        small = Image.fromarray(np.round(d * 255 / 16).astype(np.uint8)).resize((20, 20), Image.BILINEAR)
        out[i, 4:24, 4:24] = np.asarray(small)
    return out


def glyphs(n: int, rng: np.random.Generator) -> np.ndarray:
    try:
        fonts = {s: ImageFont.load_default(size=s) for s in range(14, 25)}
    except TypeError:  # Pillow < 10.1 has no scalable bundled font
        sys.exit("holdout_sets.py: glyphs need Pillow >= 10.1 (its bundled scalable font); pip install 'pillow>=10.1'")
    out = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        canvas = Image.new("L", (56, 56), 0)
        size = int(rng.integers(14, 25))
        ImageDraw.Draw(canvas).text((28, 28), LETTERS[rng.integers(len(LETTERS))], fill=255, font=fonts[size], anchor="mm")
        canvas = canvas.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR, center=(28, 28))
        dx, dy = rng.integers(-3, 4, size=2)
        out[i] = np.asarray(canvas)[14 + dy: 42 + dy, 14 + dx: 42 + dx]
    return out


def shapes(n: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        img = Image.new("L", (28, 28), 0)
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 4))):
            grey = int(rng.integers(96, 256))
            x0, y0 = rng.integers(2, 18, size=2)
            x1, y1 = x0 + rng.integers(6, 14), y0 + rng.integers(6, 14)
            box = [int(x0), int(y0), int(min(x1, 26)), int(min(y1, 26))]
            fill = grey if rng.random() < 0.5 else None
            kind = rng.integers(4)
            if kind == 0:
                draw.ellipse(box, fill=fill, outline=grey, width=2)
            elif kind == 1:
                draw.rectangle(box, fill=fill, outline=grey, width=2)
            elif kind == 2:
                draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill, outline=grey)
            else:
                draw.line(box, fill=grey, width=int(rng.integers(1, 4)))
        out[i] = np.asarray(img)
    return out


def photo_patches(n: int, rng: np.random.Generator) -> np.ndarray:
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(p).convert("L") for p in load_sample_images().images]  # 2 x [427, 640]
    out = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(rng.integers(28, 113))
        x, y = int(rng.integers(0, photo.width - side + 1)), int(rng.integers(0, photo.height - side + 1))
        out[i] = np.asarray(photo.crop((x, y, x + side, y + side)).resize((28, 28), Image.BILINEAR))
    return out


def font_digits(n: int, rng: np.random.Generator) -> np.ndarray:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = {(f, s): ImageFont.truetype(str(folder / f), s) for f in DIGIT_FONTS for s in range(16, 27)}
    out = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        canvas = Image.new("L", (56, 56), 0)
        font = fonts[DIGIT_FONTS[rng.integers(len(DIGIT_FONTS))], int(rng.integers(16, 27))]
        ImageDraw.Draw(canvas).text((28, 28), str(rng.integers(10)), fill=255, font=font, anchor="mm")
        canvas = canvas.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR, center=(28, 28))
        dx, dy = rng.integers(-2, 3, size=2)
        out[i] = np.asarray(canvas)[14 + dy: 42 + dy, 14 + dx: 42 + dx]
    return out


def scribbles(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.linspace(0, 1, 40)[:, None]
    out = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        img = Image.new("L", (28, 28), 0)
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 4))):
            p0, p1, p2 = rng.uniform(3, 25, size=(3, 2))
            curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
            draw.line([tuple(map(float, q)) for q in curve], fill=int(rng.integers(160, 256)), width=int(rng.integers(1, 4)), joint="curve")
        out[i] = np.asarray(img)
    return out


def gratings(n: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:28, 0:28].astype(np.float64) - 13.5
    out = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        angle, period, phase = rng.uniform(0, np.pi), rng.uniform(3, 14), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + phase)
        window = np.exp(-(x ** 2 + y ** 2) / (2 * rng.uniform(4, 9) ** 2)) if rng.random() < 0.5 else 1.0
        out[i] = np.round(255 * np.clip(0.5 + 0.5 * rng.uniform(0.3, 1.0) * wave * window, 0, 1))
    return out


def julia(n: int, rng: np.random.Generator, iterations: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:28, 0:28].astype(np.float64) / 27 - 0.5
    out = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        angle = rng.uniform(0, 2 * np.pi)  # c near the main cardioid's boundary: connected, detailed sets
        c = 0.5 * np.exp(1j * angle) - 0.25 * np.exp(2j * angle) + rng.normal(0, 0.02, 2) @ [1, 1j]
        zoom, centre = rng.uniform(1.2, 3.0), rng.uniform(-0.6, 0.6, 2) @ [1, 1j]
        z = centre + zoom * (x + 1j * y)
        escaped = np.full(z.shape, iterations, np.float64)
        for k in range(iterations):
            live = escaped == iterations
            z[live] = z[live] ** 2 + c
            escaped[live & (np.abs(z) > 2)] = k
        out[i] = np.round(255 * (1 - escaped / iterations))
    return out


def _characters(n: int, rng: np.random.Generator, chars: str, font_names: tuple[str, ...], sizes: range, rotate: float,
                shift: int) -> np.ndarray:
    """``n`` single characters of ``chars`` in matplotlib's bundled fonts ``font_names`` (each only with the characters it
    has), at a random size of ``sizes``, rotation within ±``rotate`` degrees and shift within ±``shift`` px, white on black."""
    import matplotlib
    from matplotlib.ft2font import FT2Font

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = {(f, s): ImageFont.truetype(str(folder / f), s) for f in font_names for s in sizes}
    has = {f: [c for c in chars if FT2Font(str(folder / f)).get_char_index(ord(c))] for f in font_names}
    out = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        name = font_names[rng.integers(len(font_names))]
        canvas = Image.new("L", (56, 56), 0)
        font = fonts[name, int(rng.integers(sizes.start, sizes.stop))]
        ImageDraw.Draw(canvas).text((28, 28), has[name][rng.integers(len(has[name]))], fill=255, font=font, anchor="mm")
        canvas = canvas.rotate(float(rng.uniform(-rotate, rotate)), resample=Image.BILINEAR, center=(28, 28))
        dx, dy = rng.integers(-shift, shift + 1, size=2)
        out[i] = np.asarray(canvas)[14 + dy: 42 + dy, 14 + dx: 42 + dx]
    return out


def symbols(n: int, rng: np.random.Generator) -> np.ndarray:
    return _characters(n, rng, SYMBOLS, SYMBOL_FONTS, range(16, 27), 12.0, 2)


def pictograms(n: int, rng: np.random.Generator) -> np.ndarray:
    return _characters(n, rng, PICTOGRAMS, PICTOGRAM_FONTS, range(18, 29), 10.0, 2)


def voronoi(n: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:28, 0:28].astype(np.float64)
    out = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        sites = rng.uniform(-2, 30, size=(int(rng.integers(4, 41)), 2))
        dist = (x[..., None] - sites[:, 0]) ** 2 + (y[..., None] - sites[:, 1]) ** 2
        cells = dist.argmin(-1)
        image = rng.integers(0, 256, len(sites))[cells]
        if rng.random() < 0.5:  # dark cell borders
            image[(np.diff(cells, axis=0, prepend=cells[:1]) != 0) | (np.diff(cells, axis=1, prepend=cells[:, :1]) != 0)] = 0
        out[i] = image
    return out


def automata(n: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        rule = AUTOMATA_RULES[rng.integers(len(AUTOMATA_RULES))]
        table = np.array([(rule >> k) & 1 for k in range(8)], np.uint8)
        cell = int(rng.integers(1, 3))  # 1 or 2 px per cell
        width, rows = 28 // cell + 2, 28 // cell
        row = (rng.random(width) < rng.uniform(0.1, 0.5)).astype(np.uint8) if rng.random() < 0.7 else \
            np.eye(1, width, width // 2, dtype=np.uint8)[0]  # random or single-cell start
        grid = np.zeros((rows, width), np.uint8)
        for r in range(rows):
            grid[r] = row
            row = table[4 * np.roll(row, 1) + 2 * row + np.roll(row, -1)]
        image = np.kron(grid[:, 1:1 + 28 // cell], np.ones((cell, cell), np.uint8))
        out[i, : image.shape[0], : image.shape[1]] = image * int(rng.integers(128, 256))
    return out


def build(name: str, n: int, seed: int) -> np.ndarray:
    """One set, ``uint8 [n, 28, 28]`` (sklearn_digits: at most 1,797); the same bytes for the same n and seed."""
    number, batch = next((b, sets) for b, sets in BATCHES.items() if name in sets)
    return globals()[name](n, np.random.default_rng([seed, batch.index(name)] + ([] if number == 1 else [number])))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch", type=int, choices=sorted(BATCHES), default=1, help="which batch of sets (default 1)")
    parser.add_argument("--n", type=int, default=1797, help="images per set (sklearn_digits has at most 1,797)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in BATCHES[args.batch]:
        images = build(name, args.n, args.seed)
        tmp = args.out / f".{name}.tmp.npy"
        np.save(tmp, images)
        tmp.replace(args.out / f"{name}.npy")
        print(f"{args.out / (name + '.npy')}: {images.shape[0]} images, mean grey {images.mean() / 255:.3f}")


if __name__ == "__main__":
    main()
