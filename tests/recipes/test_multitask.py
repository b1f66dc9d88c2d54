"""The multitask recipe: task weights route gradients, both tasks learn, PCGrad projects as the paper says."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import recipes
import recipes.multitask  # noqa: F401 - registers "multitask" (until recipes/__init__ imports it)
from recipes.base import load_checkpoint
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


def small_model_and_batch(seed=3):
    """A 1-block MultiTaskModel and one batch of 4 texts whose halves have as many masked tokens
    (so 2 replicas of 2 rows compute the same mean losses as one device)."""
    keras.utils.set_random_seed(seed)
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
    return model, x, y, sample_weight


def test_pcgrad_train_step_applies_the_summed_projected_gradients():
    """One SGD step of the model equals a step computed by hand from per-task gradients."""
    model, x, y, sample_weight = small_model_and_batch()
    encoder = model.encoder
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


# -- learned loss weighting ------------------------------------------------------------------


class StepLogs(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append({key: float(value) for key, value in logs.items()})


def fit_steps(model, x, y, sample_weight, steps):
    logs = StepLogs()
    data = tf.data.Dataset.from_tensors((x, y, sample_weight)).repeat(steps)
    model.fit(data, verbose=0, callbacks=[logs])
    return logs.steps


@pytest.mark.parametrize("jit_compile", [False, pytest.param(True, marks=pytest.mark.slow)])  # XLA: ~15-25 s
def test_uncertainty_weighting_learns_log_variances_and_adds_their_regulariser(jit_compile):
    model, x, y, sample_weight = small_model_and_batch()
    rate, weighting_rate = 0.5, 0.1
    s0 = np.log([2.0, 1.0])  # from loss_weights mlm 0.5, classification 1: weights exp(-s) = 0.5, 1
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        losses = model.task_losses(y, model(x, training=True), sample_weight)
        weighted = np.exp(-s0[0]) * losses["mlm"] + np.exp(-s0[1]) * losses["classification"]
    expected_weights = [numpy(v) - rate * numpy(tf.convert_to_tensor(g)) for v, g in zip(variables, tape.gradient(weighted, variables))]
    task_losses = np.array([numpy(losses["mlm"]), numpy(losses["classification"])])

    model.compile(optimizer=keras.optimizers.SGD(rate), loss_weights={"mlm": 0.5}, loss_weighting="uncertainty",
                  weighting_learning_rate=weighting_rate, jit_compile=jit_compile)
    np.testing.assert_allclose(numpy(model.weighting.log_variances), s0, rtol=1e-6)
    (logs,) = fit_steps(model, x, y, sample_weight, 1)
    # The logged loss holds the regulariser: sum exp(-s) L + s / 2 (s / 2 sums to 0.35 here).
    regulariser = 0.5 * s0.sum()
    assert logs["loss"] == pytest.approx(float(numpy(weighted)) + regulariser, rel=1e-5)
    # d loss / d s_i = 1/2 - exp(-s_i) L_i, nonzero; s takes one step of weighting_rate against it.
    gradient = 0.5 - np.exp(-s0) * task_losses
    assert np.all(np.abs(gradient) > 0.1)
    s1 = numpy(model.weighting.log_variances)
    np.testing.assert_allclose(s1, s0 - weighting_rate * gradient, rtol=1e-5, atol=1e-6)
    assert logs["weight_mlm"] == pytest.approx(np.exp(-s1[0]), rel=1e-5)
    assert logs["weight_classification"] == pytest.approx(np.exp(-s1[1]), rel=1e-5)
    # The network took its SGD step on the weighted losses at s0; the log-variances are not its weights.
    for variable, value in zip(variables, expected_weights):
        np.testing.assert_allclose(numpy(variable), value, atol=2e-5, err_msg=variable.path)
    assert all(id(v) not in {id(w) for w in model.trainable_variables} for v in model.weighting.weights)


def gradnorm_reference_weights(model, x, y, sample_weight, alpha, rate):
    """GradNorm's first step by hand: loss ratios are all 1, so each target is the mean G."""
    shared = model.encoder.blocks[-1].trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        losses = model.task_losses(y, model(x, training=True), sample_weight)
    norms = np.array([numpy(tf.linalg.global_norm([tf.convert_to_tensor(g) for g in tape.gradient(losses[t], shared)]))
                      for t in ("mlm", "classification")])
    weights = np.ones(2)
    gradient_norms = weights * norms
    average = gradient_norms.mean()
    updated = np.maximum(weights - rate * np.sign(gradient_norms - average) * norms / average, 0.01)
    return updated * 2 / updated.sum(), norms


@pytest.mark.parametrize("jit_compile", [False, pytest.param(True, marks=pytest.mark.slow)])  # XLA: ~15-25 s
def test_gradnorm_weights_follow_the_gradient_norms_and_sum_to_the_task_count(jit_compile):
    model, x, y, sample_weight = small_model_and_batch()
    expected, norms = gradnorm_reference_weights(model, x, y, sample_weight, alpha=1.5, rate=0.2)
    assert abs(norms[0] - norms[1]) > 0.1 * norms.mean(), "the tasks' gradient norms should differ here"
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss_weighting="gradnorm", gradnorm_alpha=1.5,
                  weighting_learning_rate=0.2, jit_compile=jit_compile)
    steps = fit_steps(model, x, y, sample_weight, 4)
    # The task with the larger gradient norm loses weight at the first step.
    np.testing.assert_allclose([steps[0]["weight_mlm"], steps[0]["weight_classification"]], expected, rtol=1e-4)
    for logs in steps:
        assert logs["weight_mlm"] + logs["weight_classification"] == pytest.approx(2.0, rel=1e-6)
    np.testing.assert_allclose(numpy(model.weighting.gradnorm_weights), [steps[-1]["weight_mlm"], steps[-1]["weight_classification"]], rtol=1e-6)
    assert numpy(model.weighting.initial_losses).min() > 0  # L_i(0), recorded at the first step


@pytest.mark.parametrize("weighting", ["uncertainty", "gradnorm"])
def test_learned_weighting_composes_with_pcgrad_and_reloads(weighting, tmp_path):
    model, x, y, sample_weight = small_model_and_batch()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss_weighting=weighting, gradient_surgery="pcgrad",
                  weighting_learning_rate=0.2)
    before = [numpy(w).copy() for w in model.weighting.weights]
    steps = fit_steps(model, x, y, sample_weight, 2)
    assert all(np.isfinite(logs["loss"]) for logs in steps)
    assert steps[-1]["weight_mlm"] != pytest.approx(1.0) and changed(before, [numpy(w) for w in model.weighting.weights])
    if weighting == "gradnorm":
        assert steps[-1]["weight_mlm"] + steps[-1]["weight_classification"] == pytest.approx(2.0, rel=1e-6)
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras")
    assert (reloaded.loss_weighting, reloaded.gradient_surgery) == (weighting, "pcgrad")
    for ours, theirs in zip(model.weighting.weights, reloaded.weighting.weights):
        np.testing.assert_array_equal(numpy(ours), numpy(theirs))


def test_learned_weighting_needs_both_tasks_and_a_known_name():
    model, *_ = small_model_and_batch()
    with pytest.raises(ValueError, match="loss_weighting 'uncertain'.*fixed, uncertainty, gradnorm"):
        model.compile(loss_weighting="uncertain")
    with pytest.raises(ValueError, match="loss_weights must all be > 0"):
        model.compile(loss_weighting="gradnorm", loss_weights={"mlm": 0.0})


_MIRRORED_WEIGHTING_SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
sys.path.insert(0, {root!r})
from tests.recipes.test_multitask import StepLogs, small_model_and_batch
from trainers import multi_worker_fix
multi_worker_fix.apply()  # as the trainer does: Keras' symbolic build cannot average the boolean padding_mask

def run(strategy, weighting, surgery):
    with strategy.scope():
        model, x, y, sample_weight = small_model_and_batch()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss_weighting=weighting, gradient_surgery=surgery,
                      weighting_learning_rate=0.2, jit_compile=False)
    logs = StepLogs()
    data = tf.data.Dataset.from_tensors((x, y, sample_weight)).repeat(3).unbatch().batch(4)
    model.fit(data, verbose=0, callbacks=[logs])
    return {{"weights": [[s["weight_mlm"], s["weight_classification"]] for s in logs.steps],
             "loss": [s["loss"] for s in logs.steps],
             "variables": [np.asarray(keras.ops.convert_to_numpy(v)).ravel().tolist() for v in model.weights],
             "replicas": strategy.num_replicas_in_sync}}

mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
results = {{}}
for weighting in ("uncertainty", "gradnorm"):
    results[weighting] = {{"single": run(tf.distribute.get_strategy(), weighting, "none"),
                           "mirrored": run(mirrored, weighting, "none")}}
# PCGrad projects each replica's own gradients (see MultiTaskModel): not one device's numbers, but it runs.
results["pcgrad"] = {{weighting: run(mirrored, weighting, "pcgrad") for weighting in ("uncertainty", "gradnorm")}}
print(json.dumps(results))
"""


@pytest.mark.slow
def test_learned_weighting_under_mirrored_strategy_equals_one_device():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    completed = subprocess.run([sys.executable, "-c", _MIRRORED_WEIGHTING_SCRIPT.format(root=root)], env=env, cwd=root,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    for weighting, result in results.pop("pcgrad").items():
        assert result["replicas"] == 2 and np.all(np.isfinite(result["loss"])), weighting
        assert result["weights"][-1] != pytest.approx([1.0, 1.0]), weighting
        if weighting == "gradnorm":
            np.testing.assert_allclose(np.sum(result["weights"], axis=1), 2.0, rtol=1e-6)
    for weighting, result in results.items():
        single, mirrored = result["single"], result["mirrored"]
        assert mirrored["replicas"] == 2 and len(mirrored["weights"]) == 3
        assert mirrored["weights"][-1] != pytest.approx([1.0, 1.0]), weighting  # the weights moved
        np.testing.assert_allclose(mirrored["weights"], single["weights"], rtol=1e-4, err_msg=weighting)
        np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=1e-4, err_msg=weighting)
        for a, b in zip(mirrored["variables"], single["variables"]):
            np.testing.assert_allclose(a, b, atol=1e-4, err_msg=weighting)


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
    report = recipe.evaluator(model).score({"in_domain": (test.texts, test.labels)})
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
    with pytest.raises(ValueError, match="loss_weighting 'gradnrom'.*fixed, uncertainty, gradnorm"):
        recipes.get("multitask", data=classification_csv, loss_weighting="gradnrom")
