"""Text corruptions: deterministic for a seed, different across seeds, and doing what they say."""

import difflib

import pytest

from zoo.data import shifts

TEXTS = [
    "a domestic cat kept as a pet or for catching mice",
    "any of various edible seeds of the grass family",
    "a hand tool with a heavy rigid head and a handle; used to deliver an impulsive force by striking",
    "the fruit of the apple tree, 3 to 4 inches across",
    "large carnivorous feline of Africa and India",
    "a plant having foliage that persists and remains green throughout the year",
] * 3  # repeats: the corruption of a text depends on (seed, text) only, so copies agree


def distance(a, b):
    return 1.0 - difflib.SequenceMatcher(None, a, b).ratio()


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda texts, seed: shifts.character_noise(texts, 0.3, seed),
        lambda texts, seed: shifts.word_dropout(texts, 0.3, seed),
        lambda texts, seed: shifts.change_case(texts, "random", seed),
    ],
    ids=["character_noise", "word_dropout", "random_case"],
)
def test_corruptions_are_deterministic_for_a_seed_and_differ_across_seeds(corrupt):
    first, again, other = corrupt(TEXTS, 1), corrupt(TEXTS, 1), corrupt(TEXTS, 2)
    assert first == again
    assert first != other
    assert len(first) == len(TEXTS) and first != TEXTS
    # A text's corruption depends on the seed and the text only, not on its neighbours or position.
    assert first[:6] == first[6:12] == first[12:]
    assert corrupt(TEXTS[3:4], 1) == first[3:4]


def test_character_noise_edits_letters_at_the_rate_and_leaves_the_rest():
    assert shifts.character_noise(TEXTS, 0.0, seed=0) == TEXTS
    light, heavy = shifts.character_noise(TEXTS, 0.1, seed=0), shifts.character_noise(TEXTS, 0.3, seed=0)
    mean = lambda noisy: sum(distance(a, b) for a, b in zip(TEXTS, noisy)) / len(TEXTS)
    assert 0.0 < mean(light) < mean(heavy) < 0.6, (mean(light), mean(heavy))
    for clean, noisy in zip(TEXTS, heavy):
        # Spaces, digits and punctuation are never hit: word boundaries survive.
        for character in " ,;34":
            assert noisy.count(character) == clean.count(character), (clean, noisy)
    with pytest.raises(ValueError, match="rate must be in"):
        shifts.character_noise(TEXTS, 1.5, seed=0)


def test_word_dropout_drops_words_but_never_empties_a_text():
    assert shifts.word_dropout(TEXTS, 0.0, seed=0) == TEXTS
    dropped = shifts.word_dropout(TEXTS, 0.2, seed=0)
    kept = sum(len(t.split()) for t in dropped) / sum(len(t.split()) for t in TEXTS)
    assert 0.6 < kept < 0.95, kept
    for clean, noisy in zip(TEXTS, dropped):
        words = clean.split()
        remaining = iter(words)
        assert all(word in remaining for word in noisy.split())  # a subsequence, order kept
    everything = shifts.word_dropout(TEXTS, 1.0, seed=0)
    assert all(len(t.split()) == 1 and t in clean.split() for t, clean in zip(everything, TEXTS))


def test_change_case_modes():
    text = ["A Cat, a DOG"]
    assert shifts.change_case(text, "upper") == ["A CAT, A DOG"]
    assert shifts.change_case(text, "lower") == ["a cat, a dog"]
    assert shifts.change_case(text, "title") == ["A Cat, A Dog"]
    randomised = shifts.change_case(TEXTS, "random", seed=3)
    assert [t.lower() for t in randomised] == [t.lower() for t in TEXTS]
    with pytest.raises(ValueError, match="Unknown case mode 'shout'"):
        shifts.change_case(text, "shout")


def test_length_buckets_partition_by_words_or_tokens():
    labels = list(range(len(TEXTS)))
    buckets = shifts.length_buckets(TEXTS, labels)
    assert list(buckets) == ["short", "long"]
    short, long = buckets["short"], buckets["long"]
    assert sorted(short[1] + long[1]) == labels  # every example exactly once, labels travel along
    assert short[0] and long[0]
    assert max(len(t.split()) for t in short[0]) < min(len(t.split()) for t in long[0])

    buckets = shifts.length_buckets(TEXTS, labels, boundaries=[9, 12])
    assert list(buckets) == ["words<9", "9<=words<12", "words>=12"]
    assert all(len(t.split()) < 9 for t in buckets["words<9"][0])
    assert all(9 <= len(t.split()) < 12 for t in buckets["9<=words<12"][0])
    assert all(len(t.split()) >= 12 for t in buckets["words>=12"][0])

    characters = lambda text: list(text)  # any callable from text to tokens
    by_tokens = shifts.length_buckets(TEXTS, labels, boundaries=[50], unit="tokens", tokenizer=characters)
    assert all(len(t) < 50 for t in by_tokens["short"][0]) and all(len(t) >= 50 for t in by_tokens["long"][0])
    with pytest.raises(ValueError, match="needs a tokenizer"):
        shifts.length_buckets(TEXTS, labels, unit="tokens")
    with pytest.raises(ValueError, match="strictly increasing"):
        shifts.length_buckets(TEXTS, labels, boundaries=[12, 9])


# -- training augmentation: the TensorFlow versions ----------------------------------------------


def tf_corrupt(function, texts, value, seed=0, epoch=0):
    """`function` applied to each text with the key of (seed, epoch, its index), as Python strings."""
    import tensorflow as tf

    return [
        function(tf.constant(text), value, shifts.augmentation_key(seed, epoch, index)).numpy().decode("utf-8")
        for index, text in enumerate(texts)
    ]


@pytest.mark.parametrize(
    "function, value",
    [("tf_character_noise", 0.3), ("tf_word_dropout", 0.3), ("tf_change_case", "random")],
)
def test_tf_corruptions_are_a_function_of_the_key(function, value):
    corrupt = getattr(shifts, function)
    first, again = tf_corrupt(corrupt, TEXTS, value), tf_corrupt(corrupt, TEXTS, value)
    assert first == again and first != TEXTS
    assert first != tf_corrupt(corrupt, TEXTS, value, seed=1)  # another seed
    assert first != tf_corrupt(corrupt, TEXTS, value, epoch=1)  # another pass
    assert first[:6] != first[6:12]  # the same text at another index: another draw


def test_tf_character_noise_edits_letters_at_the_rate_and_leaves_the_rest():
    assert tf_corrupt(shifts.tf_character_noise, TEXTS, 0.0) == TEXTS
    light = tf_corrupt(shifts.tf_character_noise, TEXTS, 0.1)
    heavy = tf_corrupt(shifts.tf_character_noise, TEXTS, 0.3)
    mean = lambda noisy: sum(distance(a, b) for a, b in zip(TEXTS, noisy)) / len(TEXTS)
    python_heavy = shifts.character_noise(TEXTS, 0.3, seed=0)
    assert 0.0 < mean(light) < mean(heavy) < 0.6, (mean(light), mean(heavy))
    assert abs(mean(heavy) - mean(python_heavy)) < 0.05  # the same rate as the Python version
    for clean, noisy in zip(TEXTS, heavy):
        for character in " ,;34":
            assert noisy.count(character) == clean.count(character), (clean, noisy)
    # Letters beyond ASCII are letters too; a substitute keeps the case.
    accented = tf_corrupt(shifts.tf_character_noise, ["ÉÉÉÉÉÉÉÉÉÉÉÉ"], 1.0)[0]
    assert accented != "ÉÉÉÉÉÉÉÉÉÉÉÉ" and accented == accented.upper()
    with pytest.raises(ValueError, match="rate must be in"):
        tf_corrupt(shifts.tf_character_noise, TEXTS, 1.5)


def test_tf_word_dropout_drops_words_but_never_empties_a_text():
    assert tf_corrupt(shifts.tf_word_dropout, TEXTS, 0.0) == TEXTS
    dropped = tf_corrupt(shifts.tf_word_dropout, TEXTS, 0.2)
    kept = sum(len(t.split()) for t in dropped) / sum(len(t.split()) for t in TEXTS)
    assert 0.6 < kept < 0.95, kept
    for clean, noisy in zip(TEXTS, dropped):
        remaining = iter(clean.split())
        assert all(word in remaining for word in noisy.split())
    everything = tf_corrupt(shifts.tf_word_dropout, TEXTS, 1.0)
    assert all(len(t.split()) == 1 and t in clean.split() for t, clean in zip(everything, TEXTS))
    assert tf_corrupt(shifts.tf_word_dropout, ["", "   "], 1.0) == ["", "   "]


def test_tf_change_case_equals_the_python_modes():
    texts = ["A Cat, a DOG", "they're 3rd-rate", "Éclair and ÉCLAIR"]
    for mode in ("upper", "lower", "title"):
        assert tf_corrupt(shifts.tf_change_case, texts, mode) == shifts.change_case(texts, mode), mode
    randomised = tf_corrupt(shifts.tf_change_case, TEXTS, "random")
    assert [t.lower() for t in randomised] == [t.lower() for t in TEXTS]


def test_augmentation_spec_probability_and_errors():
    import tensorflow as tf

    augmentation = shifts.Augmentation.parse("char_noise=0.2,word_dropout=0.2,case=lower", probability=0.5)
    assert augmentation.shifts == (("char_noise", 0.2), ("word_dropout", 0.2), ("case", "lower"))
    assert shifts.Augmentation.parse("") is None and shifts.Augmentation.parse("  ") is None
    text = tf.constant(TEXTS[2])
    outputs = [augmentation.apply(text, shifts.augmentation_key(0, 0, index)).numpy().decode() for index in range(120)]
    clean = sum(output == TEXTS[2] for output in outputs) / len(outputs)
    assert 0.3 < clean < 0.7, clean  # half the examples stay clean
    assert all(output == output.lower() for output in outputs if output != TEXTS[2])
    always = shifts.Augmentation.parse("word_dropout=0.5")
    assert always.apply(text, shifts.augmentation_key(0, 0, 0)).numpy().decode() != TEXTS[2]
    with pytest.raises(ValueError, match="Cannot augment with 'length'"):
        shifts.Augmentation.parse("char_noise=0.1,length=8")
    with pytest.raises(ValueError, match="Unknown shift 'typos'"):
        shifts.Augmentation.parse("typos=0.1")
    with pytest.raises(ValueError, match="augment_probability must be in"):
        shifts.Augmentation.parse("char_noise", probability=2.0)
