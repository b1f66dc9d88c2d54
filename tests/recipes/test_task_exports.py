"""The multitask and distill recipes export through their own modules: multitask offers both of
its tasks (classify and fill_mask from one shared encoder), distill its student."""

import numpy as np
import pytest
import tensorflow as tf

import recipes
from recipes.base import load_checkpoint
from zoo.export import read_metadata

TINY = dict(
    vocabulary_size=300, sequence_length=16, num_layers=1, hidden_dim=32, num_heads=2, intermediate_dim=64,
    batch_size=16, warmup_steps=0, learning_rate=3e-3,
)
TEXTS = ["the cat and the dog", "a hammer and a saw", "the [MASK] and the dog"]


@pytest.mark.slow
def test_multitask_exports_classify_and_fill_mask_from_one_encoder(classification_csv, tmp_path):
    recipe = recipes.get("multitask", data=classification_csv, **TINY)
    train, _ = recipe.datasets()
    model = recipe.build_model()
    model.fit(train.take(3), verbose=0)
    path = recipe.export(model, str(tmp_path / "multitask" / "1"), top_k=4)
    metadata = read_metadata(path)
    assert metadata["recipe"] == "multitask" and metadata["export_options"] == {"top_k": 4}
    assert {"classify", "classify_ids", "fill_mask", "fill_mask_ids", "embed", "tokenize"} <= set(metadata["signatures"])
    assert metadata["label_names"] == recipe.label_names
    loaded = tf.saved_model.load(path)

    # classify: the shared encoder and the classification head, on clean text.
    logits = recipe.evaluator(model).predict_logits(TEXTS)
    exported = loaded.signatures["classify"](text=tf.constant(TEXTS))
    np.testing.assert_allclose(exported["logits"].numpy(), logits, atol=1e-5)
    assert exported["logits"].numpy().shape == (3, len(recipe.label_names))
    # The same as the training model's classification output (its clean-input branch).
    token_ids, padding_mask = recipe.preprocessor.pack(recipe.preprocessor.tokenize(tf.constant(TEXTS)), pad_to_longest=True)
    full = model({"token_ids": token_ids, "padding_mask": padding_mask, "clean_token_ids": token_ids,
                  "mask_positions": tf.zeros((3, 1), tf.int32)}, training=False)
    np.testing.assert_allclose(full["classification"], logits, atol=1e-5)

    # fill_mask: the same encoder with the MLM head, at the [MASK] position.
    filled = loaded.signatures["fill_mask"](text=tf.constant(TEXTS))
    assert filled["num_masks"].numpy().tolist() == [0, 0, 1]
    ids, mask = recipe.preprocessor.pack(recipe.preprocessor.tokenize_with_masks(tf.constant(TEXTS[2:])), pad_to_longest=True)
    position = int(np.flatnonzero(ids.numpy()[0] == recipe.preprocessor.mask_id)[0])
    mlm = model({"token_ids": ids, "padding_mask": mask, "clean_token_ids": ids,
                 "mask_positions": tf.constant([[position]], tf.int32)}, training=False)["mlm"]
    expected = np.argsort(-np.asarray(mlm, np.float32)[0, 0])[:4]
    assert filled["token_ids"].numpy()[2, 0].tolist() == expected.tolist()
    # One copy of the encoder's weights in the export, not one per signature.
    unique = {id(v): v for v in loaded.variables}.values()
    assert sum(int(np.prod(v.shape)) for v in unique) <= model.count_params() + 16  # + a seed state or two


@pytest.mark.slow
def test_distill_exports_its_student_as_a_classifier(classification_csv, tmp_path):
    teacher = recipes.get("classifier", data=classification_csv, **TINY)
    train, _ = teacher.datasets()
    teacher_model = teacher.build_model()
    teacher_model.fit(train.take(3), verbose=0)
    teacher.save(teacher_model, str(tmp_path / "teacher"))
    recipe = recipes.get("distill", data=classification_csv, teacher=str(tmp_path / "teacher"), **{**TINY, "hidden_dim": 16})
    train, _ = recipe.datasets()
    model = recipe.build_model()
    model.fit(train.take(2), verbose=0)
    path = recipe.export(model, str(tmp_path / "student" / "1"))
    metadata = read_metadata(path)
    assert metadata["recipe"] == "distill" and metadata["config"]["teacher"] == str(tmp_path / "teacher")
    assert {"classify", "classify_ids", "embed", "tokenize"} <= set(metadata["signatures"])
    exported = tf.saved_model.load(path).signatures["classify"](text=tf.constant(TEXTS[:2]))["logits"].numpy()
    np.testing.assert_allclose(exported, recipe.evaluator(model).predict_logits(TEXTS[:2]), atol=1e-5)
    assert exported.shape == (2, len(recipe.label_names))
    # The student alone was exported: its width, not the teacher's.
    student, _, _ = load_checkpoint(str(tmp_path / "teacher"))
    assert model.student.encoder.hidden_dim == 16 != student.encoder.hidden_dim
    embedding = tf.saved_model.load(path).signatures["embed"](text=tf.constant(TEXTS[:1]))["embedding"]
    assert embedding.shape == (1, 16)
