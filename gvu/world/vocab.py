"""The nano world's vocabulary: shapes (the world's "classes"), colours, sizes, relations.

GenEval's metadata calls an object kind a `class` (a COCO category); in the nano world a class is a shape.
Colours are GenEval's ten colour words, with RGB values chosen to stay distinct after blur, noise and JPEG
against the mid-grey background.
"""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross")

# GenEval's colour words (evaluate_images.py COLORS), RGB picked far apart from each other and from BACKGROUND.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 0),
    "yellow": (240, 230, 30),
    "green": (10, 130, 20),
    "blue": (30, 70, 220),
    "purple": (140, 40, 180),
    "pink": (250, 140, 200),
    "brown": (120, 70, 20),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
BACKGROUND: tuple[int, int, int] = (128, 128, 128)

SIZES: tuple[str, ...] = ("small", "large")
# Object half-width as a fraction of the image side: small 8 px, large 12 px at 64 px.
SIZE_FRACTION: dict[str, float] = {"small": 8 / 64, "large": 12 / 64}

# GenEval's pairwise relations (include[i].position = [relation, index of the reference object]).
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
# GenEval++'s absolute regions (include[i].region) and relative sizes (include[i].size).
REGIONS: tuple[str, ...] = ("left", "right", "above", "below")
RELATIVE_SIZES: tuple[str, ...] = ("larger", "smaller")

MIN_COUNT, MAX_COUNT = 1, 4
MAX_OBJECTS = 6  # per scene; more do not fit at 64 px without touching

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}

GENEVAL_TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
GENEVALPP_TAGS: tuple[str, ...] = (
    "color_attr",
    "counting",
    "color_count_attr",
    "color_spatial_attr",
    "spatial_count_attr",
    "size_spatial_attr",
    "multi_object_count_attr",
)
SUITES: dict[str, tuple[str, ...]] = {"geneval": GENEVAL_TAGS, "genevalpp": GENEVALPP_TAGS}


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "sh", "ch")) else "s")
