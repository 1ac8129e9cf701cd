"""Reviews: a seeded, text-only sentiment dataset about ShapesWorld things that needs no download.

Each row holds a short review in `text` ("the big red circle was wonderful", "i did not like the
blue square at all", "i expected to hate the green cross but it was great") and its label,
"positive" or "negative". The label is a fixed function of the sentence, `sentiment`:
- a clause's polarity is its sentiment word's, flipped by each negation ("not bad" is positive);
- intensifiers ("very", "really") change nothing;
- in a contrast the main clause decides: "A but B" -> B; "A, although B" and "although B, A" -> A.
The concession of a contrast has the opposite polarity, so both sentiment words occur and only
their order and the connector tell the label: a bag-of-words model stays well below 100%, a
model that reads word order can reach it. Classes are balanced exactly (half of each).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Literal

from .shapes import COLORS, SHAPES

SPLITS = ("train", "val", "test")
PROMPT = "is this review positive or negative?"
VERSION = 1  # bumped when rows change; info.json records it so stale caches are regenerated

ADJECTIVES = {+1: ("good", "great", "wonderful", "lovely", "nice", "excellent", "beautiful", "fun"),
              -1: ("bad", "awful", "terrible", "boring", "ugly", "dull", "horrible", "poor")}
VERBS = {+1: (("loved", "love"), ("liked", "like"), ("enjoyed", "enjoy"), ("adored", "adore")),
         -1: (("hated", "hate"), ("disliked", "dislike"), ("detested", "detest"), ("loathed", "loathe"))}
INTENSIFIERS = ("very", "really", "truly", "so", "quite", "extremely")
SIZES = ("big", "small", "large", "tiny")
NEGATIONS = frozenset({"not", "never"})
# Every form of a sentiment word -> its polarity.
POLARITY = {w: p for p, ws in ADJECTIVES.items() for w in ws} | {
    w: p for p, vs in VERBS.items() for forms in vs for w in forms}


def _clause_polarity(words: list[str], sentence: str) -> int:
    """The last sentiment word's polarity, flipped once per negation in the clause."""
    found = [POLARITY[w] for w in words if w in POLARITY]
    if not found:
        raise ValueError(f"no sentiment word in {' '.join(words)!r} of review {sentence!r}")
    return found[-1] * (-1) ** sum(w in NEGATIONS for w in words)


def sentiment(text: str) -> Literal["positive", "negative"]:
    """The label of a review: the polarity of its main clause (see the module docstring)."""
    words = re.findall(r"[a-z]+|,", text.lower())
    if "but" in words:  # "A but B": B decides
        main = words[len(words) - words[::-1].index("but"):]
    elif "although" in words and "," in words:  # the clause without "although" decides
        comma = words.index(",")
        first, second = words[:comma], words[comma + 1:]
        main = second if "although" in first else first
    else:
        main = words
    return "positive" if _clause_polarity(main, text) > 0 else "negative"


def _intensified(rng: random.Random, word: str, p: float = 0.35) -> str:
    return f"{rng.choice(INTENSIFIERS)} {word}" if rng.random() < p else word


def _thing(rng: random.Random) -> tuple[str, str]:
    """(a first mention, a later mention): ("the big red circle", "it" or "the circle")."""
    shape = rng.choice(SHAPES)
    size = f"{rng.choice(SIZES)} " if rng.random() < 0.4 else ""
    color = f"{rng.choice(list(COLORS))} " if rng.random() < 0.7 else ""
    again = "it" if rng.random() < 0.6 else f"the {shape}"
    return f"{rng.choice(('the', 'this', 'that'))} {size}{color}{shape}", again


def _clause(rng: random.Random, polarity: int, negated: bool, subject: str) -> str:
    """A clause about `subject` with the given polarity, negated or not."""
    word_pol = -polarity if negated else polarity  # a negation flips the word's polarity
    adj = _intensified(rng, rng.choice(ADJECTIVES[word_pol]))
    past, base = rng.choice(VERBS[word_pol])
    if negated:
        return rng.choice((f"{subject} was not {adj}", f"{subject} was never {adj}",
                           f"{subject} did not look {adj}", f"{subject} did not seem {adj}",
                           f"i did not {base} {subject}", f"i did not {base} {subject} at all",
                           f"i never {past} {subject}"))
    forms = [f"{subject} was {adj}", f"{subject} looked {adj}", f"{subject} seemed {adj}",
             f"i {_intensified(rng, past)} {subject}"]
    if subject.startswith(("the ", "this ", "that ")):  # "what a lovely red circle", a first mention only
        forms.append(f"what a {adj} {subject.split(' ', 1)[1]}")
    return rng.choice(forms)


def _concession(rng: random.Random, polarity: int, subject: str) -> str:
    """The clause a contrast overrides: an ordinary clause or an expectation, of `polarity`."""
    if rng.random() < 0.5:
        past, base = rng.choice(VERBS[polarity])
        adj = rng.choice(ADJECTIVES[polarity])
        return rng.choice((f"i expected to {base} {subject}", f"i thought {subject} would be {adj}"))
    return _clause(rng, polarity, rng.random() < 0.2, subject)


def review(rng: random.Random, label: Literal["positive", "negative"]) -> tuple[str, str]:
    """(text, review_type) of a review whose `sentiment` is `label`; types: plain, negated, contrast."""
    polarity = 1 if label == "positive" else -1
    first, again = _thing(rng)
    r = rng.random()
    if r < 0.45:
        return _clause(rng, polarity, False, first), "plain"
    if r < 0.65:
        return _clause(rng, polarity, True, first), "negated"
    negated = rng.random() < 0.2
    form = rng.random()
    if form < 0.5:  # "A but B": B decides
        text = f"{_concession(rng, -polarity, first)} but {_clause(rng, polarity, negated, again)}"
    elif form < 0.75:  # "A, although B": A decides
        text = f"{_clause(rng, polarity, negated, first)}, although {_concession(rng, -polarity, again)}"
    else:  # "although B, A": A decides
        text = f"although {_concession(rng, -polarity, first)}, {_clause(rng, polarity, negated, again)}"
    return text, "contrast"


def generate(out: str | Path, split: Literal["train", "val", "test"] = "train", n: int = 2000, seed: int = 0,
             progress: bool = True) -> Path:
    """Write OUT/manifest.jsonl with `n` sentiment rows (text only) and OUT/info.json."""
    if split not in SPLITS:
        raise ValueError(f"unknown reviews split {split!r}; choose from {list(SPLITS)}")
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"reviews/{split}/{seed}")  # str seeds are hashed stably (sha512)
    labels = ["positive"] * (n // 2) + ["negative"] * (n - n // 2)
    rng.shuffle(labels)
    tmp = out / "manifest.jsonl.tmp"
    from tqdm import tqdm

    with tmp.open("w") as f:
        for i, label in enumerate(tqdm(labels, desc=f"reviews {split}", disable=not progress, unit="row")):
            text, kind = review(rng, label)  # type: ignore[arg-type]
            assert sentiment(text) == label, f"generated {text!r} for {label}"  # the grammar obeys the rules
            f.write(json.dumps({"id": f"{split}-{seed}-{i:06d}", "task": "sentiment", "prompt": PROMPT,
                                "text": text, "target": label, "split": split, "review_type": kind}) + "\n")
    tmp.replace(out / "manifest.jsonl")
    (out / "info.json").write_text(json.dumps({"dataset": "reviews", "version": VERSION, "split": split,
                                                "n": n, "seed": seed}) + "\n")
    return out / "manifest.jsonl"
