"""The multitask recipe: task weights route gradients, both tasks learn, PCGrad projects as the paper says."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import recipes
import recipes.multitask  # noqa: F401 - registers "multitask" (until recipes/__init__ imports it)
from recipes.base import load_checkpoint
from zoo.evaluation import evaluate_classifier
from zoo.models import Encoder, TextClassifier
from zoo.models.multitask import MultiTaskModel, pcgrad_project

TINY = dict(
    vocabulary_size=300, sequence_length=16, num_layers=1, hidden_dim=32, num_heads=2, intermediate_dim=64,
    batch_size=16, warmup_steps=0, learning_rate=3e-3, dropout=0.0, classifier_dropout=0.0,
)


def numpy(value):
    return keras.ops.convert_to_numpy(value)


def weights_of(layer):
    return [numpy(w).copy() for w in layer.weights]


def changed(before, after):
    return any(not np.array_equal(b, a) for b, a in zip(before, after))


# -- PCGrad on hand-made vectors --------------------------------------------------------------


def test_pcgrad_projects_conflicting_gradients_onto_each_others_normal_plane():
    g1, g2 = np.array([1.0, 0.0]), np.array([-1.0, 1.0])  # g1 . g2 = -1 < 0: they conflict
    p1, p2 = (numpy(g) for g in pcgrad_project([g1, g2]))
    # g1' = g1 - (g1.g2 / |g2|^2) g2 = [1, 0] + 0.5 [-1, 1]; g2' = g2 - (g2.g1 / |g1|^2) g1 = [-1, 1] + [1, 0]
    np.testing.assert_allclose(p1, [0.5, 0.5], atol=1e-7)
    np.testing.assert_allclose(p2, [0.0, 1.0], atol=1e-7)
    assert p1 @ g2 >= -1e-7 and p2 @ g1 >= -1e-7
    np.testing.assert_allclose(p1 + p2, [0.5, 1.5], atol=1e-7)  # what the train step applies


def test_pcgrad_leaves_agreeing_and_orthogonal_gradients_alone():
    for g1, g2 in ([[1.0, 2.0], [3.0, 1.0]], [[1.0, 0.0], [0.0, 5.0]], [[1.0, -1.0], [0.0, 0.0]]):
        p1, p2 = (numpy(g) for g in pcgrad_project([np.array(g1), np.array(g2)]))
        np.testing.assert_allclose(p1, g1)
        np.testing.assert_allclose(p2, g2)


def test_pcgrad_with_three_tasks_projects_against_the_original_gradients():
    rng = np.random.default_rng(0)
    gradients = [rng.normal(size=6) for _ in range(3)]
    projected = [numpy(g) for g in pcgrad_project(gradients)]
    for i, gradient in enumerate(gradients):
        expected = gradient.copy()
        for j, other in enumerate(gradients):
            if j != i and expected @ other < 0:
                expected -= (expected @ other) / (other @ other) * other
        np.testing.assert_allclose(projected[i], expected, rtol=1e-5, atol=1e-6)


# -- the model's PCGrad train step ------------------------------------------------------------


def test_pcgrad_train_step_applies_the_summed_projected_gradients():
    """One SGD step of the model equals a step computed by hand from per-task gradients."""
    keras.utils.set_random_seed(3)
    encoder = Encoder(50, 8, num_layers=1, hidden_dim=8, num_heads=2, intermediate_dim=16, dropout=0.0)
    model = MultiTaskModel(encoder, num_classes=3, dropout=0.0)
    rng = np.random.default_rng(0)
    x = {
        "token_ids": rng.integers(5, 50, size=(4, 8)).astype("int32"),
        "padding_mask": np.ones((4, 8), bool),
        "mask_positions": rng.integers(1, 7, size=(4, 2)).astype("int32"),
    }
    x["clean_token_ids"] = x["token_ids"].copy()
    y = {"mlm": rng.integers(5, 50, size=(4, 2)).astype("int32"), "classification": np.array([0, 1, 2, 1], "int32")}
    sample_weight = {"mlm": np.array([[1, 1], [1, 0], [1, 1], [0, 1]], "float32"), "classification": np.ones(4, "float32")}
    learning_rate = 0.5

    variables = model.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        losses = model.task_losses(y, model(x, training=True), sample_weight)
    per_task = [[tf.convert_to_tensor(g) if g is not None else tf.zeros(v.shape) for g, v in zip(tape.gradient(losses[t], variables), variables)] for t in ("mlm", "classification")]
    shared = {id(v) for v in encoder.trainable_variables}
    flat = [np.concatenate([numpy(g).ravel() for g, v in zip(grads, variables) if id(v) in shared]) for grads in per_task]
    assert flat[0] @ flat[1] < 0, "this seed should make the tasks conflict, or the test checks nothing"
    combined = sum(numpy(g) for g in pcgrad_project(flat))
    expected, offset = [], 0
    for index, variable in enumerate(variables):
        if id(variable) in shared:
            size = int(np.prod(variable.shape))
            step = combined[offset : offset + size].reshape(variable.shape)
            offset += size
        else:
            step = numpy(per_task[0][index]) + numpy(per_task[1][index])
        expected.append(numpy(variable) - learning_rate * step)

    model.compile(optimizer=keras.optimizers.SGD(learning_rate), gradient_surgery="pcgrad")
    model.fit(tf.data.Dataset.from_tensors((x, y, sample_weight)), verbose=0)
    for variable, value in zip(variables, expected):
        np.testing.assert_allclose(numpy(variable), value, atol=2e-5, err_msg=variable.path)


# -- the recipe -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def csv_recipe(classification_csv):
    return recipes.get("multitask", data=classification_csv, **TINY)


def test_datasets_mask_the_classification_texts(csv_recipe):
    train, _ = csv_recipe.datasets()
    x, y, sample_weight = next(iter(train))
    assert set(x) == {"token_ids", "padding_mask", "mask_positions", "clean_token_ids"}
    assert set(y) == set(sample_weight) == {"mlm", "classification"}
    token_ids, clean = x["token_ids"].numpy(), x["clean_token_ids"].numpy()
    positions, weights = x["mask_positions"].numpy(), sample_weight["mlm"].numpy()
    assert (token_ids != clean).any() and (x["padding_mask"].numpy() == (clean != 0)).all()
    for row in range(len(clean)):
        real = positions[row][weights[row] > 0]
        # The MLM targets are the clean ids at the masked positions; nothing else changed.
        np.testing.assert_array_equal(y["mlm"].numpy()[row][weights[row] > 0], clean[row][real])
        unmasked = np.setdiff1d(np.arange(clean.shape[1]), real)
        np.testing.assert_array_equal(token_ids[row][unmasked], clean[row][unmasked])
    assert y["classification"].shape == (csv_recipe.config.batch_size,)


@pytest.mark.parametrize("off", ["classification", "mlm"])
def test_a_task_weighted_zero_leaves_its_head_untouched(classification_csv, off):
    recipe = recipes.get("multitask", data=classification_csv, **{**TINY, f"{off}_weight": 0.0})
    train, _ = recipe.datasets()
    model = recipe.build_model()
    heads = {"classification": model.classification_head, "mlm": model.mlm_head}
    head, other = heads[off], heads["mlm" if off == "classification" else "classification"]
    # A head's own weights: the MLM head also tracks the token table it is tied to, the encoder's.
    encoder_ids = {id(w) for w in model.encoder.weights}
    own = lambda layer: [numpy(w).copy() for w in layer.weights if id(w) not in encoder_ids]
    if off == "mlm":
        assert {w.path.split("/")[-2] for w in head.weights if id(w) not in encoder_ids} >= {"transform", "transform_norm"}
    before = [own(head), own(other), weights_of(model.encoder)]
    history = model.fit(train.take(4), verbose=0).history
    assert not changed(before[0], own(head)), f"the {off} head changed with {off}_weight=0"
    assert changed(before[1], own(other)) and changed(before[2], weights_of(model.encoder))
    # The token table tied to the MLM head belongs to the encoder: it trains whichever task is off.
    embedding = model.encoder.token_embedding.weights
    assert embedding[0].trainable and changed(before[2][:1], [numpy(embedding[0])])
    # Its loss is still logged, but the total is the other task's loss alone.
    active = "mlm" if off == "classification" else "classification"
    assert history[f"{off}_loss"][0] > 0
    np.testing.assert_allclose(history["loss"][0], history[f"{active}_loss"][0], rtol=1e-5)


@pytest.mark.parametrize("surgery", ["none", "pcgrad"])
def test_both_losses_fall_when_both_tasks_train(csv_recipe, surgery):
    recipe = csv_recipe.with_overrides(gradient_surgery=surgery)
    train, validation = recipe.datasets(repeat=True)
    held_out = validation.take(3).cache()  # cached: the same masks before and after
    model = recipe.build_model(total_steps=30)
    before = model.evaluate(held_out, return_dict=True, verbose=0)
    model.fit(train, steps_per_epoch=30, epochs=1, verbose=0)
    after = model.evaluate(held_out, return_dict=True, verbose=0)
    assert after["mlm_loss"] < before["mlm_loss"] - 0.5, (before, after)
    # Relative: from near ln(2) the 30 steps take 8-25% off (masks are drawn unseeded).
    assert after["classification_loss"] < 0.92 * before["classification_loss"], (before, after)
    assert after["classification_accuracy"] > 0.8
    expected = {"loss", "mlm_loss", "mlm_accuracy", "mlm_perplexity", "classification_loss", "classification_accuracy", "classification_macro_f1"}
    assert expected <= set(after)
    np.testing.assert_allclose(after["mlm_perplexity"], np.exp(after["mlm_loss"]), rtol=1e-3)


def test_checkpoint_reloads_and_the_classifier_view_agrees(csv_recipe, tmp_path):
    recipe = csv_recipe.with_overrides(gradient_surgery="pcgrad", mlm_weight=0.3)
    train, _ = recipe.datasets()
    model = recipe.build_model()
    model.fit(train.take(2), verbose=0)
    recipe.save(model, tmp_path / "run")
    reloaded, tokenizer, config = load_checkpoint(str(tmp_path / "run"))
    assert isinstance(reloaded, MultiTaskModel) and config["gradient_surgery"] == "pcgrad"
    assert reloaded.gradient_surgery == "pcgrad" and reloaded.task_weights == {"mlm": 0.3, "classification": 1.0}
    assert tokenizer.get_vocabulary() == recipe.tokenizer.get_vocabulary()
    x, _, _ = next(iter(train))
    for ours, theirs in zip(model(x)["classification"], reloaded(x)["classification"]):
        np.testing.assert_allclose(numpy(ours), numpy(theirs), atol=1e-5)
    classifier = model.to_classifier()
    assert isinstance(classifier, TextClassifier)
    plain = {"token_ids": x["clean_token_ids"], "padding_mask": x["padding_mask"]}
    np.testing.assert_allclose(numpy(classifier(plain)), numpy(model(x)["classification"]), atol=1e-5)
    # Shift evaluation reads the classification side; on clean text it agrees with Keras' metric.
    test = recipe.examples(split="test")
    report = evaluate_classifier(model, recipe, {"in_domain": (test.texts, test.labels)})
    (dataset,) = recipe.datasets(splits=("test",))
    keras_accuracy = model.evaluate(dataset, return_dict=True, verbose=0)["classification_accuracy"]
    assert report["sets"]["in_domain"]["accuracy"] == pytest.approx(keras_accuracy, abs=1e-6)


def test_bad_settings_fail_with_the_valid_values(classification_csv):
    with pytest.raises(ValueError, match="gradient_surgery 'pcgard'.*none, pcgrad"):
        recipes.get("multitask", data=classification_csv, gradient_surgery="pcgard")
    with pytest.raises(ValueError, match="not both 0"):
        recipes.get("multitask", data=classification_csv, mlm_weight=0.0, classification_weight=0.0)
    with pytest.raises(ValueError, match="classification_input 'raw'"):
        recipes.get("multitask", data=classification_csv, classification_input="raw")
