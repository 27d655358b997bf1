"""The label sets the paper aligns through: AudioSet's 7 music moods and Manga109's 12 genres.

These are facts of the data sets (names and AudioSet ontology ids), shared by training,
export (which precomputes their text embeddings into the bundle) and the runtime.
"""
from __future__ import annotations

from dataclasses import dataclass

# AudioSet ontology: children of "Music mood" (/t/dd00030), in ontology order.
MOOD_IDS: dict[str, str] = {
    "Happy music": "/t/dd00031",
    "Funny music": "/t/dd00032",
    "Sad music": "/t/dd00033",
    "Tender music": "/t/dd00034",
    "Exciting music": "/t/dd00035",
    "Angry music": "/t/dd00036",
    "Scary music": "/t/dd00037",
}
MOODS: tuple[str, ...] = tuple(MOOD_IDS)
MUSIC_MOOD_PARENT_ID = "/t/dd00030"

# Manga109 genres as the seed paper names them.
GENRES: tuple[str, ...] = (
    "animal",
    "battle",
    "fantasy",
    "four-frame cartoons",
    "historical drama",
    "horror",
    "humor",
    "love romance",
    "romantic comedy",
    "science fiction",
    "sports",
    "suspense",
)

# The paper's text for a class is the class name itself.
DEFAULT_TEMPLATE = "{}"


@dataclass(frozen=True)
class LabelSet:
    """A named set of class names and the prompt template that turns each into text."""

    name: str
    classes: tuple[str, ...]
    template: str = DEFAULT_TEMPLATE

    def prompts(self) -> list[str]:
        return [self.template.format(c) for c in self.classes]


MOOD_LABELS = LabelSet("moods", MOODS)
GENRE_LABELS = LabelSet("genres", GENRES)
