"""The byte-level BPE: lossless on every byte, and equal to Hugging Face `tokenizers` with the
same vocabulary and merges (the reference: the zoo trains with it, and applies its own graph
implementation in tf.data and exports)."""

import os
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import tensorflow as tf

from zoo.data import bpe
from zoo.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, save_tokenizer, train_tokenizer

AWKWARD = [
    "", " ", "\n", "\t\t", "\r\n", "a\r\nb\rc\n", "    return x  \n\n\n", "x\x0b\x0cy",
    "def f(x):\n\treturn x\t# tab\n", "trailing spaces   ", "   leading", "a  b   c    d",
    "héllo wörld, ça va? Ünïcödé", "naïve café résumé", "日本語のテキスト、句読点。「引用」", "中文：你好，世界！",
    "한국어 텍스트입니다", "Ελληνικά κείμενα", "русский текст", "مرحبا بالعالم", "עברית", "हिन्दी ६ अंक", "ภาษาไทย",
    "emoji 😀👍🏽👨‍👩‍👧 flags 🇫🇷", "e\u0301 vs é", "\u00a0no-break\u2009thin\u3000ideographic\u202f",
    "zero\u200bwidth\u200djoiner\ufeffbom", "ﬁ ² ™ ＡＢＣ …", "'s 'self' don't I'll we've", "[SEP] [MASK] [PAD]",
    "x" * 500, " " * 300, "\u1c8a unicode 16 letter", "=" * 79 + "\n", "0123456789 3.14159e-10 0x1F", "\U0010FFFF\ue000",
    "https://example.org/a?b=c&d=e#f", "\\n literal backslash", "\x00\x01\x7f\x80",
]


@pytest.fixture(scope="module")
def tokenizer(lm_corpus):
    texts = [open(os.path.join(lm_corpus, name), encoding="utf-8").read() for name in sorted(os.listdir(lm_corpus))]
    return train_tokenizer(texts + AWKWARD, 2000, kind="bpe")


@pytest.fixture(scope="module")
def reference(tokenizer):
    return bpe.hf_tokenizer(tokenizer.vocabulary, tokenizer.merges)


def test_lossless_and_equal_to_hugging_face_on_awkward_text(tokenizer, reference):
    ids = tokenizer(tf.constant(AWKWARD))
    for text, row in zip(AWKWARD, ids.to_list()):
        assert row == reference.encode(text).ids, repr(text)
    decoded = tokenizer.detokenize(ids).numpy()
    for text, raw in zip(AWKWARD, decoded):
        assert raw == text.encode("utf-8"), repr(text)
    # One text, and ids given as lists, as generation hands them over.
    assert tokenizer.detokenize(tokenizer("  x\t= 1\r\n")).numpy() == b"  x\t= 1\r\n"
    assert tokenizer.detokenize([[5, 6], [7]]).shape == (2,)
    # Nothing to merge at all: empty texts, an empty batch.
    assert tokenizer(["", ""]).to_list() == [[], []]
    assert tokenizer(tf.constant([], tf.string)).to_list() == []
    assert tokenizer.detokenize(tokenizer(["", "a"])).numpy().tolist() == [b"", b"a"]


def test_nul_characters_survive(tokenizer, reference):
    # TensorFlow Text's regex split stops at NUL; the graph cuts there first (zoo/data/bpe.py).
    for text in ("\x00", "a\x00b", " \x00\x00 !\x00!x", "\x00\uffff\x00\n"):
        ids = tokenizer(text)
        assert ids.numpy().tolist() == reference.encode(text).ids, repr(text)
        assert tokenizer.detokenize(ids).numpy() == text.encode("utf-8")


def test_special_tokens_keep_their_ids_and_never_come_from_text(tokenizer):
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    ids = tokenizer("[SEP] [MASK]").numpy().tolist()
    assert not set(ids) & {0, 1, 2, 3, 4}


def test_merges_give_fewer_tokens_than_bytes(tokenizer, lm_corpus):
    text = open(os.path.join(lm_corpus, "textwrap.py"), encoding="utf-8").read()
    assert len(tokenizer(text)) < len(text.encode("utf-8")) / 3


def test_save_and_load_round_trip(tokenizer, tmp_path):
    save_tokenizer(tokenizer, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["merges.txt", "tokenizer.json", "vocabulary.json"]
    loaded = load_tokenizer(str(tmp_path))
    np.testing.assert_array_equal(loaded(AWKWARD).flat_values.numpy(), tokenizer(AWKWARD).flat_values.numpy())


def test_runs_inside_tf_data_and_a_saved_model(tokenizer, tmp_path):
    dataset = tf.data.Dataset.from_tensor_slices(AWKWARD).map(tokenizer)
    for text, ids in zip(AWKWARD, dataset):
        assert tokenizer.detokenize(ids).numpy() == text.encode("utf-8")
    module = tf.Module()
    module.tokenizer = tokenizer
    module.round_trip = tf.function(
        lambda text: tokenizer.detokenize(tokenizer(text)), input_signature=[tf.TensorSpec([None], tf.string)]
    )
    module.encode = tf.function(lambda text: tokenizer(text).to_tensor(-1), input_signature=[tf.TensorSpec([None], tf.string)])
    tf.saved_model.save(module, str(tmp_path / "bpe"))
    # A fresh process with TensorFlow and TensorFlow Text only: no Keras, no zoo code.
    script = (
        "import sys, tensorflow as tf, tensorflow_text\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "texts = [line.encode().decode('unicode_escape') for line in sys.argv[2:]]\n"
        "out = m.round_trip(tf.constant(texts)).numpy()\n"
        "print(all(a == t.encode('utf-8', 'surrogatepass') for a, t in zip(out, texts)))\n"
        "print(m.encode(tf.constant(texts)).numpy().tolist())\n"
    )
    texts = ["def f(x):\n\treturn x  \n", "日本語、テスト。 😀"]
    escaped = [t.encode("unicode_escape").decode() for t in texts]
    env = {**os.environ, "PYTHONPATH": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "bpe"), *escaped], capture_output=True,
                            text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-2] == "True"
    expected = tokenizer(texts).to_tensor(-1).numpy().tolist()
    assert eval(lines[-1]) == expected


def test_bad_vocabularies_are_refused():
    vocabulary = {token: index for index, token in enumerate(SPECIAL_TOKENS + bpe.byte_alphabet())}
    with pytest.raises(ValueError, match="not two tokens"):
        bpe.BytePairTokenizer(vocabulary, ["a b"])
    without_a = {token: index for index, token in enumerate(t for t in vocabulary if t != "a")}
    with pytest.raises(ValueError, match="byte symbols"):
        bpe.BytePairTokenizer(without_a, [])
    with pytest.raises(ValueError, match="cannot lowercase"):
        train_tokenizer(["x"], 300, lowercase=True, kind="bpe")


@pytest.mark.slow
def test_whole_standard_library_is_lossless_and_equal_to_hugging_face(tokenizer, reference):
    """Every source file of the standard library (tests included): the graph's pre-tokenisation
    equals Hugging Face's and concatenates back to the file; every distinct piece gets
    Hugging Face's ids and decodes back to itself. Together: identical ids and a byte-exact
    round trip on the whole corpus, at the cost of one BPE pass per distinct piece.

    Every file takes about 2.5 minutes on two cores (passed on all of them); the suite takes
    every 16th file, and ZOO_TEST_WHOLE_STDLIB=1 takes them all."""
    from tensorflow_text import regex_split
    from tokenizers import Regex, pre_tokenizers

    splitter = pre_tokenizers.Split(Regex(bpe.PRETOKENIZE_PATTERN), behavior="isolated")
    root = sysconfig.get_paths()["stdlib"]
    paths = sorted(
        os.path.join(directory, name) for directory, _, names in os.walk(root) for name in names if name.endswith(".py")
    )
    texts = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", newline="") as file:  # newline="": CRLF stays CRLF
                texts.append(file.read())
        except (UnicodeDecodeError, OSError):
            continue  # a handful of test files are deliberately not UTF-8
    assert len(texts) > 1500
    texts = texts if os.environ.get("ZOO_TEST_WHOLE_STDLIB") else texts[::16]
    distinct = set()
    for start in range(0, len(texts), 256):
        batch = texts[start : start + 256]
        pieces = regex_split(tf.constant(batch), bpe.PRETOKENIZE_PATTERN, bpe.PRETOKENIZE_PATTERN).to_list()
        for text, row in zip(batch, pieces):
            row = [piece.decode("utf-8") for piece in row]
            assert "".join(row) == text
            assert row == [piece for piece, _ in splitter.pre_tokenize_str(text)]
            distinct.update(row)
    distinct = sorted(distinct)
    encode = tf.function(lambda pieces: tokenizer(pieces), input_signature=[tf.TensorSpec([None], tf.string)])
    decode = tf.function(lambda ids: tokenizer.detokenize(ids))
    for start in range(0, len(distinct), 20000):  # chunks: string tensors of every piece at once need GBs
        chunk = distinct[start : start + 20000]
        ids = encode(tf.constant(chunk))
        assert ids.to_list() == [encoding.ids for encoding in reference.encode_batch(chunk)]
        assert [raw.decode("utf-8") for raw in decode(ids).numpy()] == chunk
