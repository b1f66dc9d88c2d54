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

The functions above are pure Python (no TensorFlow, nothing downloaded), for building
evaluation sets. Training augmentation (`Augmentation`: the same corruptions, as TensorFlow ops
for a tf.data pipeline) draws from stateless random ops keyed by a seed tensor instead, so a
pipeline gives the same corrupted text for the same (seed, pass, example) in any process; its
draws differ from the Python functions' (same rates, other typos). TensorFlow is imported only
when those ops are built.
"""

import dataclasses
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


# -- training augmentation: the same corruptions as TensorFlow ops ------------------------------

AUGMENT_KINDS = ("char_noise", "word_dropout", "case")


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Corruptions applied to a training text on the fly, as TensorFlow ops (`apply`).

    Args:
        shifts: ((kind, value), ...) in order of application: ("char_noise", rate),
            ("word_dropout", rate), ("case", mode); see `parse`.
        probability: the chance that an example is corrupted at all (else it stays clean).

    `apply(text, key)` corrupts one scalar string with draws from stateless random ops keyed by
    `key` (a `[2]` int tensor): the same key always gives the same text. The rules are those of
    `character_noise`, `word_dropout` and `change_case`, with one difference in typos: a swap
    whose neighbour is itself hit becomes a substitution (the Python version lets the swap
    consume the neighbour), which keeps every letter's edit independent of the letters before it.
    """

    shifts: tuple
    probability: float = 1.0

    @classmethod
    def parse(cls, spec, probability=1.0):
        """An `Augmentation` from a `--shifts`-style spec ("char_noise=0.1,word_dropout=0.2,case=random"),
        or None for an empty spec. Kinds: char_noise, word_dropout, case (`length` selects
        evaluation examples and is not a corruption; "all" includes it, so it is refused too)."""
        from zoo.evaluation import parse_shifts

        if not (spec or "").strip():
            return None
        if not 0.0 <= float(probability) <= 1.0:
            raise ValueError(f"augment_probability must be in [0, 1], got {probability}.")
        parsed = parse_shifts(spec)
        refused = [kind for kind, _ in parsed if kind not in AUGMENT_KINDS]
        if refused:
            raise ValueError(
                f"Cannot augment with {refused[0]!r} (in {spec!r}): training augmentation takes "
                f"{', '.join(AUGMENT_KINDS)}, e.g. char_noise=0.1,word_dropout=0.2,case=random."
            )
        return cls(tuple(parsed), float(probability))

    def apply(self, text, key):
        """`text` (a scalar tf.string) corrupted with draws keyed by `key` (`[2]` int32/int64)."""
        import tensorflow as tf

        key = tf.cast(key, tf.int64)
        corrupted = text
        for index, (kind, value) in enumerate(self.shifts):
            subkey = tf.random.experimental.stateless_fold_in(key, index + 1)
            if kind == "char_noise":
                corrupted = tf_character_noise(corrupted, value, subkey)
            elif kind == "word_dropout":
                corrupted = tf_word_dropout(corrupted, value, subkey)
            else:
                corrupted = tf_change_case(corrupted, value, subkey)
        if self.probability >= 1.0:
            return corrupted
        chosen = tf.random.stateless_uniform([], seed=tf.random.experimental.stateless_fold_in(key, 0)) < self.probability
        return tf.where(chosen, corrupted, text)

    def __str__(self):
        items = ",".join(f"{kind}={value:g}" if isinstance(value, float) else f"{kind}={value}" for kind, value in self.shifts)
        return items if self.probability >= 1.0 else f"{items} (p={self.probability:g})"


def augmentation_key(seed, epoch, index, stream=0):
    """The `[2]` int64 key of one example's corruption: a function of (seed, pass, example index, stream)."""
    import tensorflow as tf

    base = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    # A fixed first fold keeps these keys apart from the shuffles, which use [seed, pass] directly.
    key = tf.random.experimental.stateless_fold_in(base, 0x61756700 + int(stream))
    return tf.random.experimental.stateless_fold_in(key, tf.cast(index, tf.int64))


def _shift_left(values, fill):
    """values[1:] followed by `fill`: the next element's value at each position (same length)."""
    import tensorflow as tf

    return tf.concat([values, tf.fill([1], fill)], axis=0)[1:]


def _shift_right(values, fill):
    """`fill` followed by values[:-1]: the previous element's value at each position (same length)."""
    import tensorflow as tf

    return tf.concat([tf.fill([1], fill), values], axis=0)[: tf.shape(values)[0]]


def tf_character_noise(text, rate, key):
    """`character_noise` of one scalar tf.string (letters: Unicode category L), keyed by `key`."""
    import tensorflow as tf

    _check_rate("rate", rate)
    characters = tf.strings.unicode_split(text, "UTF-8")
    count = tf.shape(characters)[0]
    is_letter = tf.strings.regex_full_match(characters, r"\pL")
    is_upper = tf.strings.regex_full_match(characters, r"\p{Lu}")
    draws = tf.random.stateless_uniform([3, count], seed=key)
    hit = is_letter & (draws[0] < rate)
    kind = tf.minimum(tf.cast(draws[1] * len(TYPO_KINDS), tf.int32), len(TYPO_KINDS) - 1)
    kind_is = {name: hit & tf.equal(kind, position) for position, name in enumerate(TYPO_KINDS)}
    swap = kind_is["swap"] & _shift_left(is_letter, False) & ~_shift_left(hit, False)
    substitute = kind_is["substitute"] | (kind_is["swap"] & ~swap)
    consumed = _shift_right(swap, False)  # the right neighbour of a swap moved left
    alphabet = tf.constant(list(string.ascii_lowercase) + list(string.ascii_uppercase))
    letter_index = tf.minimum(tf.cast(draws[2] * 26, tf.int32), 25) + 26 * tf.cast(is_upper, tf.int32)
    random_letters = tf.gather(alphabet, letter_index)
    following = _shift_left(characters, "")
    # Each position writes up to two characters: [first, second].
    first = tf.where(substitute, random_letters, tf.where(swap, following, characters))
    second = tf.where(swap, characters, random_letters)
    keep_first = ~kind_is["delete"] & ~consumed
    keep_second = kind_is["insert"] | swap
    pieces = tf.reshape(tf.stack([first, second], axis=1), [-1])
    keep = tf.reshape(tf.stack([keep_first, keep_second], axis=1), [-1])
    return tf.strings.reduce_join(tf.boolean_mask(pieces, keep))


def tf_word_dropout(text, rate, key):
    """`word_dropout` of one scalar tf.string, keyed by `key` (one word always stays)."""
    import tensorflow as tf

    _check_rate("rate", rate)
    words = tf.strings.split(text)
    count = tf.shape(words)[0]
    keep = tf.random.stateless_uniform([count], seed=key) >= rate
    fallback = tf.cast(tf.random.stateless_uniform([], seed=tf.random.experimental.stateless_fold_in(key, 1)) * tf.cast(count, tf.float32), tf.int32)
    keep = keep | (~tf.reduce_any(keep) & tf.equal(tf.range(count), tf.minimum(fallback, count - 1)))
    joined = tf.strings.reduce_join(tf.boolean_mask(words, keep), separator=" ")
    return tf.where(tf.reduce_all(keep), text, joined)


def tf_change_case(text, mode, key):
    """`change_case` of one scalar tf.string; "random" flips a coin per character keyed by `key`."""
    import tensorflow as tf

    if mode not in CASE_MODES:
        raise ValueError(f"Unknown case mode {mode!r}; expected one of {', '.join(CASE_MODES)}.")
    if mode == "upper":
        return tf.strings.upper(text, encoding="utf-8")
    if mode == "lower":
        return tf.strings.lower(text, encoding="utf-8")
    characters = tf.strings.unicode_split(text, "UTF-8")
    upper, lower = tf.strings.upper(characters, encoding="utf-8"), tf.strings.lower(characters, encoding="utf-8")
    if mode == "title":  # upper after a non-letter, lower after a letter (str.title's rule)
        is_letter = tf.strings.regex_full_match(characters, r"\pL")
        chosen = ~_shift_right(is_letter, False)
    else:
        chosen = tf.random.stateless_uniform([tf.shape(characters)[0]], seed=key) < 0.5
    return tf.strings.reduce_join(tf.where(chosen, upper, lower))
