"""Writes the offline demo's data: a WordPiece vocabulary and SQuAD v1.1 train and dev sets.

Every text is generated here from our own templates and word lists: short encyclopaedia-style
paragraphs about invented people, towns and ships, each with questions whose answers are spans
of the paragraph. The invented names are built from a small set of syllables, so the vocabulary
holds those syllables as WordPiece pieces and a name the model has never seen still tokenises
into familiar pieces. The dev set uses names that never occur in the train set: a model can only
score on it by learning where answers stand relative to the question's cues ("born in", "founded
by", "carried"), not by remembering entities.

The output is deterministic (a fixed seed and no dependence on hash order), so running

    python -m mobilebert_jax.demo.make_data

rewrites `vocab.txt`, `train.json` and `dev.json` next to this file byte for byte.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import string
from collections.abc import Iterable, Sequence

SEED = 20240611
NUM_TRAIN_PARAGRAPHS = 420  # per kind: 140 people, 140 towns, 140 ships
NUM_DEV_PARAGRAPHS = 90
QUESTIONS_PER_PARAGRAPH = 5
FACTS_PER_PARAGRAPH = 4  # of the 4 to 6 an entity has: shorter paragraphs, more variety

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Invented names are two or three of these syllables (plus a suffix for towns).
SYLLABLES = (
  "ka", "lo", "mir", "den", "vo", "sa", "ri", "tan", "bel", "ko", "ra", "vin", "te", "lu",
  "mo", "zar", "ni", "pe", "dra", "fen", "gor", "hal", "is", "jun", "kel", "lam", "nor", "os",
  "pim", "rus", "sel", "tor", "ul", "ves", "wen", "yar", "zel", "bra", "cor", "fa",
)  # fmt: skip
TOWN_SUFFIXES = ("ford", "wick", "dale", "mouth", "stead", "holm", "by", "ton", "gate", "moor")

PROFESSIONS = (
  "baker", "carpenter", "weaver", "sailor", "painter", "clockmaker", "glassblower",
  "beekeeper", "mapmaker", "potter", "blacksmith", "librarian", "astronomer", "gardener",
  "stonemason", "bookbinder", "teacher", "doctor", "printer", "tailor",
)  # fmt: skip
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "grey", "white", "black", "brown")
INSTRUMENTS = ("violin", "flute", "cello", "harp", "drum", "trumpet", "lute", "piano", "clarinet")
OBJECTS = ("lamp", "clock", "chair", "boat", "kite", "bell", "telescope", "map", "quilt", "vase")
PRODUCTS = (
  "cheese", "wool", "pottery", "glass", "honey", "apples", "salt", "paper", "lace", "cider",
  "timber", "copper", "bells", "clocks", "rope",
)  # fmt: skip
TOWN_SIZES = ("small", "quiet", "busy", "old", "windy", "hilly", "pretty", "crowded")
SHIP_TYPES = ("schooner", "steamer", "ferry", "barge", "clipper", "trawler", "brig", "tugboat")
CARGOES = ("grain", "coal", "wine", "spices", "timber", "salt", "wool", "tea", "marble", "iron")
DISTRACTORS = (
  "The winters there are long and cold.",
  "Few written records from that time survive.",
  "Local stories about this are still told today.",
  "Some details of this account are disputed.",
  "A museum now keeps several letters from that period.",
  "The summers in the region are warm and dry.",
)


@dataclasses.dataclass(frozen=True)
class Fact:
  """One sentence of a paragraph: alternative templates and the questions it answers.

  Templates use `{slot}` placeholders; `questions` maps an answer slot to alternative question
  templates.
  """

  templates: tuple[str, ...]
  questions: dict[str, tuple[str, ...]]


@dataclasses.dataclass
class Paragraph:
  """A rendered paragraph: its text, and where each slot's value first appears in it."""

  text: str
  spans: dict[str, int]


def _pronouns(rng: random.Random) -> dict[str, str]:
  if rng.random() < 0.5:
    return {"She": "She", "she": "she", "her": "her", "Her": "Her"}
  return {"She": "He", "she": "he", "her": "his", "Her": "His"}


PERSON_FACTS = (
  Fact(
    (
      "{name} was born in {birthplace} in {birth_year}.",
      "{name} was born in the town of {birthplace} in the year {birth_year}.",
    ),
    {
      "birthplace": ("Where was {name} born?", "In which town was {name} born?"),
      "birth_year": ("In what year was {name} born?", "When was {name} born?"),
    },
  ),
  Fact(
    (
      "{She} worked as a {profession} for {years} years.",
      "For {years} years {she} earned a living as a {profession}.",
    ),
    {
      "profession": ("What did {name} work as?", "What was the job of {name}?"),
      "years": (
        "For how many years did {name} work?",
        "How long did {name} work as a {profession}?",
      ),
    },
  ),
  Fact(
    (
      "{Her} most famous work is a {colour} {object} called the {creation}.",
      "{She} is best remembered for the {creation}, a {colour} {object}.",
    ),
    {
      "creation": (
        "What is the most famous work of {name} called?",
        "What is {name} best remembered for?",
      ),
      "colour": ("What colour is the {creation}?", "What colour was the {object} made by {name}?"),
    },
  ),
  Fact(
    (
      "In the evenings {she} played the {instrument}.",
      "{She} also loved music and played the {instrument} well.",
    ),
    {"instrument": ("Which instrument did {name} play?", "What did {name} play in the evenings?")},
  ),
  Fact(
    (
      "{She} learned the trade from {teacher}, an old friend of the family.",
      "As a child {she} was taught by {teacher}.",
    ),
    {"teacher": ("Who taught {name}?", "From whom did {name} learn the trade?")},
  ),
  Fact(
    (
      "Later {she} moved to {home}, where {she} died in {death_year}.",
      "{She} spent {her} last years in {home} and died there in {death_year}.",
    ),
    {
      "home": (
        "Where did {name} spend {her} last years?",
        "Where did {name} move to later in life?",
      ),
      "death_year": ("In what year did {name} die?", "When did {name} die?"),
    },
  ),
)

TOWN_FACTS = (
  Fact(
    (
      "{town} is a {size} town on the {river} River.",
      "The {size} town of {town} lies on the banks of the {river} River.",
    ),
    {"river": ("Which river is {town} on?", "On which river does {town} lie?")},
  ),
  Fact(
    ("It belongs to the region of {region}.", "{town} is part of the {region} region."),
    {"region": ("Which region does {town} belong to?", "In which region is {town}?")},
  ),
  Fact(
    (
      "The town was founded in {founded} by {founder}.",
      "{founder} founded {town} in {founded}.",
    ),
    {
      "founded": ("When was {town} founded?", "In what year was {town} founded?"),
      "founder": ("Who founded {town}?", "By whom was {town} founded?"),
    },
  ),
  Fact(
    (
      "Today it is famous for its {product}.",
      "Visitors come to {town} mainly to buy its {product}.",
    ),
    {"product": ("What is {town} famous for?", "What do visitors buy in {town}?")},
  ),
  Fact(
    ("About {population} people live there.", "The town has a population of about {population}."),
    {"population": ("How many people live in {town}?", "What is the population of {town}?")},
  ),
)

SHIP_FACTS = (
  Fact(
    (
      "The {ship} was a {kind} built in {port} in {built}.",
      "The {kind} called the {ship} was built in {port} in {built}.",
    ),
    {
      "kind": ("What kind of ship was the {ship}?", "What type of vessel was the {ship}?"),
      "port": ("Where was the {ship} built?", "In which port was the {ship} built?"),
      "built": ("When was the {ship} built?", "In what year was the {ship} built?"),
    },
  ),
  Fact(
    ("Its first captain was {captain}.", "{captain} commanded the {ship} on its first voyage."),
    {"captain": ("Who was the first captain of the {ship}?", "Who commanded the {ship} first?")},
  ),
  Fact(
    ("The ship mostly carried {cargo}.", "For most of its life the {ship} carried {cargo}."),
    {"cargo": ("What did the {ship} carry?", "What cargo did the {ship} mostly carry?")},
  ),
  Fact(
    (
      "It made {voyages} voyages before it was retired in {retired}.",
      "After {voyages} voyages the {ship} was retired in {retired}.",
    ),
    {
      "voyages": ("How many voyages did the {ship} make?", "How many times did the {ship} sail?"),
      "retired": ("When was the {ship} retired?", "In what year was the {ship} retired?"),
    },
  ),
)


class NameMaker:
  """Invented names, never repeating one handed out before (across train and dev)."""

  def __init__(self, rng: random.Random, taken: set[str]):
    self._rng = rng
    self._taken = taken

  def word(self, suffixes: Sequence[str] = ()) -> str:
    while True:
      parts = self._rng.sample(SYLLABLES, self._rng.choice((2, 2, 3)))
      if suffixes:
        parts.append(self._rng.choice(suffixes))
      name = "".join(parts).capitalize()
      if name not in self._taken:
        self._taken.add(name)
        return name

  def person(self) -> str:
    return f"{self.word()} {self.word()}"


def _with_articles(template: str, values: dict[str, str]) -> str:
  """Turns "a {slot}" into "an {slot}" where the slot's value starts with a vowel."""

  def article(match: re.Match) -> str:
    vowel = values[match.group(2)][:1].lower() in "aeiou"
    return f"{match.group(1)}{'n' if vowel else ''} {{{match.group(2)}}}"

  return re.sub(r"\b([Aa]) \{(\w+)\}", article, template)


def _render(template: str, values: dict[str, str], text: list[str], spans: dict[str, int]) -> None:
  """Appends a filled-in template to `text`, recording where each slot value first appears."""
  template = _with_articles(template, values)
  offset = sum(len(piece) for piece in text)
  for piece in re.split(r"(\{\w+\})", template):
    if piece.startswith("{"):
      slot = piece[1:-1]
      spans.setdefault(slot, offset)
      piece = values[slot]
    text.append(piece)
    offset += len(piece)


def _paragraph(
  rng: random.Random, facts: Sequence[Fact], values: dict[str, str]
) -> tuple[Paragraph, list[tuple[str, str]]]:
  """Renders the first fact and `FACTS_PER_PARAGRAPH - 1` others in a random order, with an
  optional distractor sentence, and picks the questions among the rendered facts."""
  order = [facts[0], *rng.sample(facts[1:], min(FACTS_PER_PARAGRAPH, len(facts)) - 1)]
  sentences: list[str | Fact] = list(order)
  if rng.random() < 0.5:
    sentences.insert(rng.randrange(1, len(sentences) + 1), rng.choice(DISTRACTORS))
  text: list[str] = []
  spans: dict[str, int] = {}
  for i, sentence in enumerate(sentences):
    if i:
      text.append(" ")
    template = sentence if isinstance(sentence, str) else rng.choice(sentence.templates)
    _render(template, values, text, spans)
  candidates = [
    (slot, rng.choice(questions)) for fact in order for slot, questions in fact.questions.items()
  ]
  asked = rng.sample(candidates, min(QUESTIONS_PER_PARAGRAPH, len(candidates)))
  return Paragraph("".join(text), spans), asked


def _person(rng: random.Random, names: NameMaker) -> tuple[str, Sequence[Fact], dict[str, str]]:
  birth = rng.randint(1650, 1900)
  values = {
    "name": names.person(),
    "birthplace": names.word(TOWN_SUFFIXES),
    "birth_year": str(birth),
    "profession": rng.choice(PROFESSIONS),
    "years": str(rng.randint(3, 40)),
    "colour": rng.choice(COLOURS),
    "object": (thing := rng.choice(OBJECTS)),
    "creation": f"{names.word()} {thing.capitalize()}",
    "instrument": rng.choice(INSTRUMENTS),
    "teacher": names.person(),
    "home": names.word(TOWN_SUFFIXES),
    "death_year": str(birth + rng.randint(45, 90)),
    **_pronouns(rng),
  }
  return values["name"], PERSON_FACTS, values


def _town(rng: random.Random, names: NameMaker) -> tuple[str, Sequence[Fact], dict[str, str]]:
  values = {
    "town": names.word(TOWN_SUFFIXES),
    "size": rng.choice(TOWN_SIZES),
    "river": names.word(),
    "region": names.word(),
    "founded": str(rng.randint(900, 1800)),
    "founder": names.person(),
    "product": rng.choice(PRODUCTS),
    "population": str(rng.randint(2, 90) * 100),
  }
  return values["town"], TOWN_FACTS, values


def _ship(rng: random.Random, names: NameMaker) -> tuple[str, Sequence[Fact], dict[str, str]]:
  built = rng.randint(1700, 1950)
  values = {
    "ship": names.word(),
    "kind": rng.choice(SHIP_TYPES),
    "port": names.word(TOWN_SUFFIXES),
    "built": str(built),
    "captain": names.person(),
    "cargo": rng.choice(CARGOES),
    "voyages": str(rng.randint(5, 300)),
    "retired": str(built + rng.randint(10, 60)),
  }
  return f"The {values['ship']}", SHIP_FACTS, values


def make_dataset(rng: random.Random, names: NameMaker, num_paragraphs: int, prefix: str) -> dict:
  """A SQuAD v1.1 document of `num_paragraphs` paragraphs, one article per paragraph."""
  makers = (_person, _town, _ship)
  articles = []
  for p in range(num_paragraphs):
    title, facts, values = makers[p % len(makers)](rng, names)
    paragraph, asked = _paragraph(rng, facts, values)
    qas = []
    for q, (slot, template) in enumerate(asked):
      answer = values[slot]
      start = paragraph.spans[slot]
      assert paragraph.text[start : start + len(answer)] == answer
      qas.append(
        {
          "id": f"{prefix}{p}-{q}",
          "question": _with_articles(template, values).format(**values),
          "answers": [{"text": answer, "answer_start": start}],
        }
      )
    articles.append({"title": title, "paragraphs": [{"context": paragraph.text, "qas": qas}]})
  return {"version": "1.1", "data": articles}


def _words(texts: Iterable[str]) -> set[str]:
  """Lower-cased words of texts, split at whitespace and punctuation as BERT's basic step does."""
  words = set()
  for text in texts:
    words.update(re.findall(r"[a-z]+", text.lower()))
  return words


def make_vocab() -> list[str]:
  """The vocabulary: special tokens, characters, digits, template words and name syllables.

  Every single character (as a word start and as a `##` continuation) is included, so no text
  made of ASCII letters, digits and punctuation ever becomes [UNK].
  """
  template_texts = [*DISTRACTORS]
  for facts in (PERSON_FACTS, TOWN_FACTS, SHIP_FACTS):
    for fact in facts:
      template_texts += [re.sub(r"\{\w+\}", " ", t) for t in fact.templates]
      for questions in fact.questions.values():
        template_texts += [re.sub(r"\{\w+\}", " ", t) for t in questions]
  lists = (PROFESSIONS, COLOURS, INSTRUMENTS, OBJECTS, PRODUCTS, TOWN_SIZES, SHIP_TYPES, CARGOES)
  words = _words(template_texts) | {w for words in lists for w in words}
  words |= {"he", "his", "she", "her", "the"}
  letters = string.ascii_lowercase
  tokens = list(SPECIAL_TOKENS)
  tokens += list(string.punctuation) + list(string.digits) + list(letters)
  tokens += [f"##{c}" for c in string.digits + letters]
  tokens += [str(n) for n in range(10, 100)] + [f"##{n:02d}" for n in range(100)]
  tokens += sorted(words - set(tokens))
  pieces = sorted(set(SYLLABLES))
  tokens += [p for p in pieces if p not in tokens]
  tokens += [
    f"##{p}" for p in sorted(set(SYLLABLES) | set(TOWN_SUFFIXES)) if f"##{p}" not in tokens
  ]
  assert len(tokens) == len(set(tokens))
  return tokens


def write_all(output_dir: str) -> list[str]:
  """Writes `vocab.txt`, `train.json` and `dev.json` into `output_dir`; returns their paths."""
  rng = random.Random(SEED)
  taken: set[str] = set()
  train = make_dataset(rng, NameMaker(rng, taken), NUM_TRAIN_PARAGRAPHS, "t")
  dev = make_dataset(rng, NameMaker(rng, taken), NUM_DEV_PARAGRAPHS, "d")
  os.makedirs(output_dir, exist_ok=True)
  paths = []
  for name, content in (
    ("vocab.txt", "".join(f"{t}\n" for t in make_vocab())),
    ("train.json", json.dumps(train, separators=(",", ":"), ensure_ascii=False) + "\n"),
    ("dev.json", json.dumps(dev, separators=(",", ":"), ensure_ascii=False) + "\n"),
  ):
    path = os.path.join(output_dir, name)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
      f.write(content)
    paths.append(path)
  return paths


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--output_dir", default=os.path.dirname(os.path.abspath(__file__)), help="where to write"
  )
  args = parser.parse_args(argv)
  for path in write_all(args.output_dir):
    print(f"wrote {path} ({os.path.getsize(path):,} bytes)")


if __name__ == "__main__":
  main()
