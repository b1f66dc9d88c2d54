"""Robust training of `TextClassifier`: the adversarial perturbation, its train step, consistency terms.

Small models without dropout (unless a test needs it), so that every number is deterministic
and can be recomputed by hand with the public pieces: `Encoder.embed`,
`TextClassifier.logits_from_embeddings` and `adversarial_perturbation`.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from zoo.models import Encoder, TextClassifier

BATCH, LENGTH, CLASSES = 6, 12, 3


def make_classifier(dropout=0.0, seed=0):
    keras.utils.set_random_seed(seed)
    encoder = Encoder(
        60, LENGTH, num_layers=1, hidden_dim=16, num_heads=2, intermediate_dim=32, dropout=dropout,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.2, seed=seed),
    )
    return TextClassifier(encoder, CLASSES, pooling="mean", dropout=dropout)


def make_batch(seed=0):
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(1, 60, size=(BATCH, LENGTH)).astype("int32")
    lengths = np.array([4, 12, 7, 9, 5, 12])
    padding_mask = np.arange(LENGTH)[None, :] < lengths[:, None]
    token_ids = np.where(padding_mask, token_ids, 0).astype("int32")
    labels = rng.integers(0, CLASSES, size=BATCH).astype("int32")
    return {"token_ids": token_ids, "padding_mask": padding_mask}, labels


def compiled(model, learning_rate=0.0, jit_compile=False, **remedies):
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    model.configure_training(**remedies)
    return model


def per_example_loss(model, embeddings, x, y):
    logits = model.logits_from_embeddings(embeddings, x["padding_mask"], training=False)
    return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True).numpy()


def norms(delta):
    return np.sqrt(np.sum(np.square(delta), axis=(1, 2)))


def test_the_embedding_split_is_the_forward_pass():
    model = make_classifier()
    x, _ = make_batch()
    split = model.logits_from_embeddings(model.encoder.embed(x["token_ids"]), x["padding_mask"], training=False)
    np.testing.assert_allclose(split.numpy(), model(x, training=False).numpy(), atol=1e-6)


def test_fgm_perturbation_has_the_norm_and_raises_every_examples_loss():
    model = compiled(make_classifier(), adversarial="fgm", adversarial_epsilon=0.5)
    x, y = make_batch()
    delta = model.adversarial_perturbation(x, y, training=False).numpy()
    np.testing.assert_allclose(norms(delta), 0.5, rtol=1e-5)
    assert np.all(delta[~x["padding_mask"]] == 0.0)  # padding is never perturbed
    embeddings = model.encoder.embed(x["token_ids"])
    clean = per_example_loss(model, embeddings, x, y)
    attacked = per_example_loss(model, embeddings + delta, x, y)
    assert np.all(attacked > clean), (clean, attacked)
    # A random direction of the same norm raises the loss far less (if at all).
    noise = np.random.default_rng(1).normal(size=delta.shape).astype("float32") * x["padding_mask"][:, :, None]
    noise *= 0.5 / norms(noise)[:, None, None]
    randomised = per_example_loss(model, embeddings + noise, x, y)
    assert np.mean(attacked - clean) > 3 * abs(np.mean(randomised - clean))


def test_pgd_stays_in_the_ball_and_beats_fgm():
    x, y = make_batch()
    fgm = compiled(make_classifier(), adversarial="fgm", adversarial_epsilon=1.0)
    pgd = compiled(make_classifier(), adversarial="pgd", adversarial_epsilon=1.0, adversarial_steps=5)
    one_step = compiled(make_classifier(), adversarial="pgd", adversarial_epsilon=1.0, adversarial_steps=1)
    embeddings = fgm.encoder.embed(x["token_ids"])
    fgm_delta = fgm.adversarial_perturbation(x, y, training=False).numpy()
    pgd_delta = pgd.adversarial_perturbation(x, y, training=False).numpy()
    assert np.all(norms(pgd_delta) <= 1.0 + 1e-5)
    np.testing.assert_allclose(one_step.adversarial_perturbation(x, y, training=False).numpy(), fgm_delta, atol=1e-6)
    fgm_loss = per_example_loss(fgm, embeddings + fgm_delta, x, y).mean()
    pgd_loss = per_example_loss(fgm, embeddings + pgd_delta, x, y).mean()
    assert pgd_loss > fgm_loss > per_example_loss(fgm, embeddings, x, y).mean()


def manual_adversarial_gradients(model, x, y, weight):
    """The gradients of clean + weight x adversarial, the perturbation held fixed."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    delta = model.adversarial_perturbation(x, y, training=True)
    with tf.GradientTape() as tape:
        clean = loss_fn(y, model(x, training=True))
        embeddings = model.encoder.embed(x["token_ids"])
        attacked = loss_fn(y, model.logits_from_embeddings(embeddings + delta, x["padding_mask"], training=True))
        total = clean + weight * attacked
    gradients = tape.gradient(total, model.trainable_variables)
    return [tf.convert_to_tensor(g).numpy() for g in gradients], float(clean), float(attacked)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager-graph", "xla"])
def test_fgm_train_step_applies_clean_plus_weighted_adversarial_gradients(jit_compile):
    x, y = make_batch()
    reference = make_classifier()
    compiled(reference, adversarial="fgm", adversarial_epsilon=0.5)
    gradients, clean, attacked = manual_adversarial_gradients(reference, x, y, weight=0.7)
    model = compiled(make_classifier(), learning_rate=1.0, jit_compile=jit_compile,
                     adversarial="fgm", adversarial_epsilon=0.5, adversarial_weight=0.7)
    before = [v.numpy() for v in model.trainable_variables]
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["adversarial_loss"] == pytest.approx(attacked, rel=1e-4)
    assert logs["loss"] == pytest.approx(clean + 0.7 * attacked, rel=1e-4)
    assert attacked > clean
    for old, variable, gradient in zip(before, model.trainable_variables, gradients):
        np.testing.assert_allclose(variable.numpy(), old - gradient, atol=2e-5)


def test_remedy_logs_stay_out_of_evaluation_and_the_model_saves_as_before(tmp_path):
    x, y = make_batch()
    model = compiled(make_classifier(), learning_rate=0.1, adversarial="pgd", adversarial_epsilon=0.3,
                     consistency="rdrop")
    model.fit(x, y, epochs=2, batch_size=BATCH, verbose=0)
    logs = model.evaluate(x, y, return_dict=True, verbose=0)
    assert "adversarial_loss" not in logs and "consistency_loss" not in logs and "loss" in logs
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert loaded.adversarial == "none"  # training settings are not part of the saved model


def symmetric_kl(a, b):
    p, q = tf.nn.softmax(a).numpy(), tf.nn.softmax(b).numpy()
    return 0.5 * np.sum(p * np.log(p / q) + q * np.log(q / p), axis=-1)


def test_consistency_terms_equal_the_kl_divergences_and_are_nonnegative():
    rdrop = compiled(make_classifier(), consistency="rdrop")
    augment = compiled(make_classifier(), consistency="augment")
    a = tf.constant(np.random.default_rng(0).normal(size=(5, 4)), tf.float32)
    b = tf.constant(np.random.default_rng(1).normal(size=(5, 4)), tf.float32)
    np.testing.assert_allclose(rdrop.consistency_losses(a, b).numpy(), symmetric_kl(a, b), rtol=1e-5)
    p, q = tf.nn.softmax(a).numpy(), tf.nn.softmax(b).numpy()
    np.testing.assert_allclose(augment.consistency_losses(a, b).numpy(), np.sum(p * np.log(p / q), -1), rtol=1e-5)
    for model in (rdrop, augment):
        assert np.all(model.consistency_losses(a, b).numpy() >= 0)
        np.testing.assert_allclose(model.consistency_losses(a, a).numpy(), 0.0, atol=1e-6)
    # The augment term treats the clean prediction as a fixed target.
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        term = tf.reduce_sum(augment.consistency_losses(a, b))
    gradient_a, gradient_b = tape.gradient(term, [a, b])
    assert gradient_a is None or np.all(gradient_a.numpy() == 0)
    assert np.any(gradient_b.numpy() != 0)


def test_rdrop_step_logs_a_positive_term_with_dropout_and_zero_without():
    x, y = make_batch()
    without = compiled(make_classifier(dropout=0.0), consistency="rdrop", consistency_weight=2.0)
    logs = without.train_on_batch(x, y, return_dict=True)
    assert logs["consistency_loss"] == pytest.approx(0.0, abs=1e-7)
    assert logs["loss"] == pytest.approx(without.evaluate(x, y, verbose=0, return_dict=True)["loss"], rel=1e-5)
    with_dropout = compiled(make_classifier(dropout=0.3), consistency="rdrop")
    assert with_dropout.train_on_batch(x, y, return_dict=True)["consistency_loss"] > 1e-4


def test_augment_consistency_step_adds_the_kl_to_the_augmented_view():
    x, y = make_batch()
    augmented, _ = make_batch(seed=5)
    model = compiled(make_classifier(), consistency="augment", consistency_weight=0.5)
    clean_logits = model(x, training=False)
    view = {"token_ids": augmented["token_ids"], "padding_mask": x["padding_mask"]}
    expected_term = float(np.mean(model.consistency_losses(clean_logits, model(view, training=False)).numpy()))
    clean_loss = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    batch = dict(x, augmented_token_ids=augmented["token_ids"], augmented_padding_mask=x["padding_mask"])
    logs = model.train_on_batch(batch, y, return_dict=True)
    assert expected_term > 0
    assert logs["consistency_loss"] == pytest.approx(expected_term, rel=1e-4)
    assert logs["loss"] == pytest.approx(clean_loss + 0.5 * expected_term, rel=1e-4)
    with pytest.raises(ValueError, match="augmented_token_ids"):
        model.train_on_batch(x, y)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_adversarial_training_under_mixed_precision(policy):
    x, y = make_batch()
    keras.config.set_dtype_policy(policy)
    try:
        model = make_classifier()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.configure_training(adversarial="fgm", adversarial_epsilon=0.5)
        if policy == "mixed_float16":
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        delta = model.adversarial_perturbation(x, y, training=False).numpy()
        np.testing.assert_allclose(norms(delta), 0.5, rtol=1e-5)  # computed in float32
        before = [v.numpy() for v in model.trainable_variables]
        for _ in range(20):  # float16: the first loss scales overflow and those steps are skipped
            logs = model.train_on_batch(x, y, return_dict=True)
            if any(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)):
                break
        assert np.isfinite(logs["loss"]) and logs["adversarial_loss"] > 0
        assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables))
        assert all(np.all(np.isfinite(v.numpy())) for v in model.trainable_variables)
    finally:
        keras.config.set_dtype_policy("float32")


def test_bad_settings_fail_with_the_valid_values():
    model = make_classifier()
    with pytest.raises(ValueError, match="Unknown adversarial 'fgsm'; expected one of none, fgm, pgd"):
        model.configure_training(adversarial="fgsm")
    with pytest.raises(ValueError, match="Unknown consistency 'mixup'; expected one of none, rdrop, augment"):
        model.configure_training(consistency="mixup")
    with pytest.raises(ValueError, match="adversarial_epsilon must be > 0"):
        model.configure_training(adversarial="fgm", adversarial_epsilon=0.0)
