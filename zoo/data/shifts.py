"""Deterministic corruptions of text, for measuring how a classifier holds up off its training distribution.

Every function maps a list of texts to a new list of the same length (`length_buckets` instead
splits it). Random choices come from a `random.Random` seeded per text with an MD5 digest of
`(seed, corruption, text)`: the output for one text depends only on the seed and that text, not
on its position or its neighbours, so corrupting a subset or a reordering of a test set gives
the same corrupted texts. The same seed always gives the same output; another seed another one.

| function | what changes |
|---|---|
| `character_noise(texts, rate, seed)` | typos: each letter, with probability `rate`, is substituted, deleted, doubled by an inserted letter or swapped with its neighbour |
| `word_dropout(texts, rate, seed)` | each whitespace-separated word is dropped with probability `rate` (one always stays) |
| `change_case(texts, mode, seed)` | upper / lower / title case, or each letter's case by a coin flip |
| `length_buckets(texts, labels, boundaries)` | splits a labelled set into length buckets (words or tokens) |

Pure Python: no TensorFlow, nothing downloaded.
"""

import hashlib
import random
import statistics
import string

CASE_MODES = ("upper", "lower", "title", "random")
TYPO_KINDS = ("substitute", "delete", "insert", "swap")


def _rng(seed, corruption, text):
    """A generator whose draws depend only on (seed, corruption, text)."""
    digest = hashlib.md5(f"{int(seed)}\x00{corruption}\x00{text}".encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _check_rate(name, rate):
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {rate}.")


def _random_letter(rng, like):
    letter = rng.choice(string.ascii_lowercase)
    return letter.upper() if like.isupper() else letter


def character_noise(texts, rate, seed=0):
    """Typos at `rate` per letter.

    Each letter (`str.isalpha`) is independently hit with probability `rate`; a hit applies one
    of four edits, chosen uniformly: substitute it by a random ASCII letter (case kept), delete
    it, insert a random letter after it, or swap it with the next character (when that is a
    letter too; otherwise the hit becomes a substitution). Spaces, digits and punctuation are
    never hit, so word boundaries survive and `rate` is the expected fraction of letters edited:
    0.1 is a careless typist, 0.3 text that people still read with effort.

    Args:
        texts: list of strings.
        rate: probability per letter, in [0, 1].
        seed: an integer; same seed, same typos.

    Returns:
        A list of corrupted strings, one per text.
    """
    _check_rate("rate", rate)
    corrupted = []
    for text in texts:
        rng = _rng(seed, "character_noise", text)
        characters = list(text)
        output = []
        index = 0
        while index < len(characters):
            character = characters[index]
            if not character.isalpha() or rng.random() >= rate:
                output.append(character)
                index += 1
                continue
            kind = rng.choice(TYPO_KINDS)
            following = characters[index + 1] if index + 1 < len(characters) else ""
            if kind == "swap" and not following.isalpha():
                kind = "substitute"
            if kind == "substitute":
                output.append(_random_letter(rng, character))
            elif kind == "insert":
                output.extend([character, _random_letter(rng, character)])
            elif kind == "swap":
                output.extend([following, character])
                index += 1  # the neighbour is consumed by the swap
            # "delete" appends nothing
            index += 1
        corrupted.append("".join(output))
    return corrupted


def word_dropout(texts, rate, seed=0):
    """Drops each whitespace-separated word with probability `rate`.

    At least one word of a non-empty text stays (a random one, when all were drawn for
    dropping), so no example becomes empty. The kept words are joined by single spaces; a text
    that loses no word is returned unchanged.

    Args:
        texts: list of strings.
        rate: probability per word, in [0, 1].
        seed: an integer; same seed, same words dropped.
    """
    _check_rate("rate", rate)
    corrupted = []
    for text in texts:
        rng = _rng(seed, "word_dropout", text)
        words = text.split()
        kept = [word for word in words if rng.random() >= rate]
        if not kept and words:
            kept = [rng.choice(words)]
        corrupted.append(text if len(kept) == len(words) else " ".join(kept))
    return corrupted


def change_case(texts, mode, seed=0):
    """Changes letter case: `mode` is "upper", "lower", "title" or "random".

    "random" sets each letter to upper or lower case by a fair coin (seeded); the other modes
    ignore `seed`. An uncased (lowercasing) tokenizer makes every mode invisible to its model,
    which is exactly what this shift measures.
    """
    if mode not in CASE_MODES:
        raise ValueError(f"Unknown case mode {mode!r}; expected one of {', '.join(CASE_MODES)}.")
    if mode == "upper":
        return [text.upper() for text in texts]
    if mode == "lower":
        return [text.lower() for text in texts]
    if mode == "title":
        return [text.title() for text in texts]
    corrupted = []
    for text in texts:
        rng = _rng(seed, "change_case", text)
        corrupted.append("".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text))
    return corrupted


def text_lengths(texts, unit="words", tokenizer=None):
    """Length of each text in words (whitespace split) or tokens (`tokenizer(text)`, without [CLS]/[SEP])."""
    if unit == "words":
        return [len(text.split()) for text in texts]
    if unit == "tokens":
        if tokenizer is None:
            raise ValueError("unit='tokens' needs a tokenizer (e.g. recipe.tokenizer).")
        return [len(tokenizer(text)) for text in texts]
    raise ValueError(f"Unknown length unit {unit!r}; expected 'words' or 'tokens'.")


def length_buckets(texts, labels, boundaries=None, unit="words", tokenizer=None):
    """Splits a labelled set into buckets by length.

    Bucket k holds the texts whose length lies in [boundaries[k-1], boundaries[k]) (the first
    bucket is open below, the last open above). Without `boundaries` the split is at the median
    length, giving two buckets named "short" (below the median) and "long" (the median and
    above); a single boundary gives "short"/"long" too; more boundaries give names such as
    "words<8", "8<=words<16", "words>=16".

    Args:
        texts, labels: the set (equal lengths).
        boundaries: increasing integers, or None for the median.
        unit: "words" (whitespace split) or "tokens" (needs `tokenizer`).
        tokenizer: a callable from one text to its token ids, e.g. the recipe's tokenizer.

    Returns:
        A dict, in length order, of bucket name -> (texts, labels); every bucket is present,
        possibly empty.
    """
    texts, labels = list(texts), list(labels)
    if len(texts) != len(labels):
        raise ValueError(f"Got {len(texts)} texts but {len(labels)} labels.")
    lengths = text_lengths(texts, unit, tokenizer)
    if boundaries is None:
        if not lengths:
            raise ValueError("length_buckets needs at least one text to find the median length.")
        boundaries = [statistics.median_low(lengths) if len(set(lengths)) > 1 else lengths[0]]
        # median_low keeps the boundary a real length; a boundary equal to the smallest
        # length would leave "short" empty, so move it up to the next length present.
        if boundaries[0] == min(lengths) and len(set(lengths)) > 1:
            boundaries = [sorted(set(lengths))[1]]
    boundaries = [int(b) for b in boundaries]
    if any(later <= earlier for earlier, later in zip(boundaries, boundaries[1:])):
        raise ValueError(f"boundaries must be strictly increasing, got {boundaries}.")
    if len(boundaries) == 1:
        names = ["short", "long"]
    else:
        names = [f"{unit}<{boundaries[0]}"]
        names += [f"{low}<={unit}<{high}" for low, high in zip(boundaries, boundaries[1:])]
        names += [f"{unit}>={boundaries[-1]}"]
    buckets = {name: ([], []) for name in names}
    for text, label, length in zip(texts, labels, lengths):
        index = sum(length >= boundary for boundary in boundaries)
        buckets[names[index]][0].append(text)
        buckets[names[index]][1].append(label)
    return buckets
