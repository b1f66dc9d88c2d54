"""Tiny tokenizers and models with random weights for the export tests."""

import glob
import os

import numpy as np
import pytest

PROSE = [
    "The quick brown fox jumps over the lazy dog. Then it naps!",
    "Café naïve résumé à la carte, Ångström, Łódź, Ελληνικά, Русский.",
    "Straße und Maß; ΣΟΦΟΣ σοφός (final sigma ς).",
    "don't 'quote' \"double\" — em dash – en dash «guillemets» ¿qué? ¡sí!",
    "中文字符 and 日本語 (kanji, ひらがな, カタカナ), 한국어.",
    "emoji 🙂 and symbols ∑ ∞ ≠ § ¶ † ‡ ° ± $100 #tag @user ^caret `tick` ~tilde",
    "tabs\tand\nnew lines\r\nand   spaces, trailing   ",
    "A literal [MASK] and [SEP] and [CLS] stay text.",
    "supercalifragilisticexpialidocious " + "x" * 120,
    "",
]


def code_texts(lm_corpus, count=8):
    return [open(path, encoding="utf-8").read() for path in sorted(glob.glob(os.path.join(lm_corpus, "*.py")))[:count]]


@pytest.fixture(scope="session")
def corpus(lm_corpus):
    """Code (standard-library modules) and prose: what the tokenizers are checked on."""
    return code_texts(lm_corpus) + PROSE


@pytest.fixture(scope="session")
def bpe_tokenizer(corpus):
    from zoo.data.tokenizer import train_tokenizer

    return train_tokenizer(corpus, 600, kind="bpe")


def _wordpiece(corpus, lowercase):
    from zoo.data.tokenizer import train_tokenizer

    return train_tokenizer(corpus, 400, lowercase=lowercase)


@pytest.fixture(scope="session")
def cased_wordpiece(corpus):
    return _wordpiece(corpus, False)


@pytest.fixture(scope="session")
def uncased_wordpiece(corpus):
    return _wordpiece(corpus, True)


@pytest.fixture(params=["cased", "uncased"])
def wordpiece_tokenizer(request):
    """Each WordPiece kind in turn (keras-hub's normalisation differs with casing)."""
    return request.getfixturevalue(f"{request.param}_wordpiece")


def randomize(layer, seed=0):
    """Random weights everywhere (norm scales near 1), so a wrong mapping cannot hide behind zeros and ones."""
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        shape = tuple(variable.shape)
        value = rng.standard_normal(shape) * 0.2
        if variable.path.endswith("gamma"):
            value = 1.0 + 0.5 * value
        variable.assign(value.astype(np.float32))
    return layer


def tiny_decoder(vocabulary_size, seed=0, **options):
    import keras

    from zoo.models import Decoder

    keras.utils.set_random_seed(seed)
    decoder = Decoder(vocabulary_size, 32, 2, 16, 2, 32, name="decoder", **options)
    decoder.build((None, None))
    return randomize(decoder, seed)


def tiny_encoder(vocabulary_size, seed=0, **options):
    import keras

    from zoo.models import Encoder

    keras.utils.set_random_seed(seed)
    options = {"num_segments": 2, **options}
    encoder = Encoder(vocabulary_size, 32, 2, 16, 2, 32, name="encoder", **options)
    encoder.build((None, None))
    return randomize(encoder, seed)
