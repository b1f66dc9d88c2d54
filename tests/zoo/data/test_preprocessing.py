"""Preprocessors: the one text-to-ids layer of every recipe, saved with its checkpoints.

(That the training pipelines, the layer and the exported `tokenize` signature give the same
ids is tested in tests/zoo/test_export.py against real exports.)
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import recipes
from zoo.data import corpora
from zoo.data import tokenizer as tokenizers
from zoo.data.preprocessing import (
    CausalLMPreprocessor,
    EncoderPreprocessor,
    MaskedLMPreprocessor,
    load_preprocessor,
    save_preprocessor,
)

PAD, UNK, CLS, SEP, MASK = range(5)
TEXTS = ["def f(x): return x", "import os", "class Handler(socketserver.BaseRequestHandler): pass " * 20, "x"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    documents = corpora.text_documents("stdlib", max_documents=12)
    cache_dir = tmp_path_factory.getbasetemp() / "zoo-tokenizer-cache"
    return tokenizers.train_tokenizer(documents, 1000, cache_dir=str(cache_dir), cache_key="stdlib-slice")


def ids_of(tokenizer, text):
    return np.asarray(tokenizer(text)).tolist()


def test_encoder_packing_keeps_the_first_tokens_and_pads(tokenizer):
    preprocessor = EncoderPreprocessor(tokenizer, 12)
    packed = preprocessor(TEXTS)
    token_ids, padding_mask = packed["token_ids"].numpy(), packed["padding_mask"].numpy()
    assert token_ids.shape == padding_mask.shape == (len(TEXTS), 12)
    for text, ids, mask in zip(TEXTS, token_ids.tolist(), padding_mask.tolist()):
        real = sum(mask)
        assert ids[:real] == [CLS] + ids_of(tokenizer, text)[:10] + [SEP]
        assert ids[real:] == [PAD] * (12 - real) and mask == [True] * real + [False] * (12 - real)
    # Padded to the longest row instead (what serving does): the same real tokens.
    longest = preprocessor(TEXTS[:2], pad_to_longest=True)["token_ids"].numpy()
    assert longest.shape[1] == max(len(ids_of(tokenizer, t)) for t in TEXTS[:2]) + 2
    np.testing.assert_array_equal(longest, token_ids[:2, : longest.shape[1]])


def test_masked_lm_call_masks_the_packed_text(tokenizer):
    preprocessor = MaskedLMPreprocessor(tokenizer, 32, mask_selection_rate=0.5)
    x, y, weights = preprocessor(TEXTS)
    assert preprocessor.max_predictions == 15  # ceil(0.5 * 30)
    assert x["mask_positions"].shape == y.shape == weights.shape == (len(TEXTS), 15)
    original = x["token_ids"].numpy().copy()
    for row in range(len(TEXTS)):
        real = weights[row].numpy() > 0
        positions = x["mask_positions"][row].numpy()[real]
        assert not np.isin(y[row].numpy()[real], [PAD, CLS, SEP, MASK]).any()
        original[row, positions] = y[row].numpy()[real]
    packed = EncoderPreprocessor(tokenizer, 32)(TEXTS)["token_ids"].numpy()
    np.testing.assert_array_equal(original, packed)
    # Literal "[MASK]" in text is the mask token only through tokenize_with_masks.
    with_masks = preprocessor.tokenize_with_masks(["a [MASK] b", "[MASK]"]).to_list()
    assert with_masks == [ids_of(tokenizer, "a ") + [MASK] + ids_of(tokenizer, " b"), [MASK]]
    assert MASK not in preprocessor.tokenize(["a [MASK] b"]).to_list()[0]


def test_causal_lm_documents_prompts_and_single_examples(tokenizer):
    preprocessor = CausalLMPreprocessor(tokenizer, 8)
    assert preprocessor.document_ids(tf.constant("import os")).numpy().tolist() == ids_of(tokenizer, "import os") + [SEP]
    assert preprocessor.document_ids(["import os", "x"]).to_list() == [ids_of(tokenizer, t) + [SEP] for t in ("import os", "x")]
    assert preprocessor.prompt_ids(["def "]).to_list() == [[SEP] + ids_of(tokenizer, "def ")]
    x, y, weights = preprocessor(["import os", TEXTS[2]])
    short = [SEP] + ids_of(tokenizer, "import os") + [SEP]
    n = len(short) - 1
    assert x["token_ids"].numpy()[0].tolist() == short[:-1] + [PAD] * (8 - n)
    assert y.numpy()[0].tolist() == short[1:] + [PAD] * (8 - n)
    assert weights.numpy()[0].tolist() == [1.0] * n + [0.0] * (8 - n)
    long = [SEP] + ids_of(tokenizer, TEXTS[2])
    assert x["token_ids"].numpy()[1].tolist() == long[:8] and y.numpy()[1].tolist() == long[1:9]
    assert x["padding_mask"].numpy()[1].all()


def test_saved_preprocessor_reloads_with_the_same_settings_and_ids(tokenizer, tmp_path):
    for preprocessor in (
        EncoderPreprocessor(tokenizer, 16, embedding_sequence_length=64),
        MaskedLMPreprocessor(tokenizer, 16, mask_selection_rate=0.2, max_predictions=5),
        CausalLMPreprocessor(tokenizer, 16),
    ):
        directory = tmp_path / type(preprocessor).__name__
        save_preprocessor(preprocessor, str(directory))
        saved = json.loads((directory / "preprocessor.json").read_text())
        assert saved["class"] == type(preprocessor).__name__ and saved["truncation"] == preprocessor.truncation
        loaded = load_preprocessor(str(directory))
        assert type(loaded) is type(preprocessor)
        assert loaded.get_config() == preprocessor.get_config()
        assert loaded.tokenize(TEXTS).to_list() == preprocessor.tokenize(TEXTS).to_list()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "preprocessor.json").write_text('{"class": "EncoderPreprocessor",\n "config": }')
    with pytest.raises(ValueError, match=r"preprocessor.json: not valid JSON .*line 2"):
        load_preprocessor(str(tmp_path / "broken"))
    with pytest.raises(FileNotFoundError, match="No preprocessor.json"):
        load_preprocessor(str(tmp_path))


def test_every_recipe_has_its_preprocessor_and_checkpoints_keep_it(tokenizer, tmp_path):
    shape = dict(vocabulary_size=1000, num_layers=1, hidden_dim=16, num_heads=2, intermediate_dim=32, sequence_length=24)
    kinds = {"gpt-clm": CausalLMPreprocessor, "bert-mlm": MaskedLMPreprocessor, "classifier": EncoderPreprocessor,
             "multitask": MaskedLMPreprocessor}
    for name, kind in kinds.items():
        extra = {"num_classes": 2} if name in ("classifier", "multitask") else {}
        recipe = recipes.get(name, **shape, **extra, tokenizer="wordpiece")
        with pytest.raises(ValueError, match="no tokenizer yet"):
            recipe.preprocessor
        recipe.tokenizer = tokenizer
        assert type(recipe.preprocessor) is kind and recipe.preprocessor.sequence_length == 24
        assert recipe.preprocessor is recipe.preprocessor  # made once per tokenizer
        if name == "classifier":
            recipe.label_names = ["a", "b"]
        recipe.save(recipe.build_model(), str(tmp_path / name))
        loaded = load_preprocessor(str(tmp_path / name))
        assert type(loaded) is kind and loaded.get_config() == recipe.preprocessor.get_config()
