"""Keyword-style queries derived from captions, deterministically.

Real search boxes get "black dog grass", not "A black dog is running through the grass ."; the
query-rewriting experiments need such queries with known relevant images, so they are derived
from the captions themselves by one fixed rule (no randomness, no tagger, so every machine and
every later session derives the same queries):

1. lowercase; words are runs of letters and digits (hyphenated words split: "light-colored" ->
   "light colored"); a possessive "'s" and other clitics are dropped, attached or split off
   ("dog's", "dog 's" -> "dog"), and "n't" is read as "not" ("isn't" -> "is not");
2. drop every word in :data:`STOPWORDS` (determiners, pronouns, prepositions, conjunctions,
   auxiliaries and copulas, a few adverbs of place such as "there");
3. drop repeats, keeping the first occurrence;
4. a caption with no word left keeps its lowercased words instead (step 1 only), so a query is
   never empty.

Number words ("two dogs") and colours stay: they are what a user types. The same rule builds the
LoRA rewriter's training pairs (train captions, ``scripts/train_rewriter.py``) and the evaluation
queries (test captions, ``scripts/eval_rewrite.py``).
"""

from __future__ import annotations

import re
from typing import Iterable

#: Version of the rule; bump it when STOPWORDS or the tokenisation change, since cached rewrites
#: and results are keyed by the query text it produces.
KEYWORD_RULE_VERSION = 1

DETERMINERS = frozenset(
    "a an the this that these those some any each every another either neither no such "
    "my your his her its our their whose which what".split()
)
PRONOUNS = frozenset(
    "i me you he him she it we us they them myself yourself himself herself itself ourselves themselves "
    "who whom something someone somebody anything anyone".split()
)
PREPOSITIONS = frozenset(
    "about above across after against along alongside amid among amongst around at atop before behind below "
    "beneath beside besides between beyond by down during for from in inside into near next of off on onto "
    "out outside over past per round through throughout to toward towards under underneath until up upon "
    "via with within without".split()
)
CONJUNCTIONS = frozenset("and or but nor so yet while as than then if because although though whereas".split())
AUXILIARIES = frozenset(
    "is are was were be been being am do does did done has have had having will would shall should "
    "can could may might must".split()
)
OTHER = frozenset("there here not very also just too".split())

#: Every word the rule drops: determiners, pronouns, prepositions, conjunctions, auxiliaries, other.
STOPWORDS: frozenset[str] = DETERMINERS | PRONOUNS | PREPOSITIONS | CONJUNCTIONS | AUXILIARIES | OTHER

_WORD = re.compile(r"'?[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """Step 1: lowercase word tokens; clitics cut off, attached ("dog's") or split off as Karpathy's
    tokenised captions have them ("dog 's")."""
    text = text.lower().replace("\u2019", "'").replace("can't", "can not").replace("won't", "will not")
    tokens = _WORD.findall(text.replace("n't", " not"))
    return [w.split("'", 1)[0] for w in tokens if not w.startswith("'")]


def caption_keywords(caption: str) -> str:
    """``"A black dog is running through the grass ."`` -> ``"black dog running grass"``."""
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    tokens = words(caption)
    if not tokens:
        raise ValueError(f"caption {caption!r} has no words to derive keywords from")
    kept = [w for w in tokens if w not in STOPWORDS] or tokens
    return " ".join(dict.fromkeys(kept))


def keyword_queries(captions: Iterable[str]) -> list[str]:
    """:func:`caption_keywords` of each caption, naming the index of one that has no words."""
    out = []
    for i, caption in enumerate(captions):
        try:
            out.append(caption_keywords(caption))
        except (TypeError, ValueError) as e:
            raise type(e)(f"captions[{i}]: {e}") from None
    return out
