"""LoRA (Keras' adapters on the zoo's projections), int8 quantization and summaries of every task model."""

import io

import keras
import numpy as np
import pytest

from zoo.models import CausalLM, Decoder, DistillationModel, Encoder, MaskedLM, MultiTaskModel, TextClassifier
from zoo.models.lora import enable_lora, lora_layers, merge_lora, trainable_share

VOCAB, LENGTH, BATCH = 50, 12, 8
rng = np.random.default_rng(11)


def encoder(layers=2, hidden=16):
    return Encoder(VOCAB, 16, layers, hidden, 2, 2 * hidden, dropout=0.0, num_segments=2)


def decoder():
    return Decoder(VOCAB, 32, 2, 16, 2, 32, num_key_value_heads=1, use_rotary=True)


def classifier_inputs():
    padding = np.ones((BATCH, LENGTH), bool)
    padding[::2, 9:] = False
    return {"token_ids": rng.integers(1, VOCAB, (BATCH, LENGTH)).astype("int32"), "padding_mask": padding}


def mlm_inputs():
    return {**classifier_inputs(), "mask_positions": rng.integers(0, LENGTH, (BATCH, 3)).astype("int32")}


def clm_inputs():
    return rng.integers(1, VOCAB, (BATCH, LENGTH)).astype("int32")


# name: (model factory, inputs, labels, loss) for the models trained below.
MODELS = {
    "classifier": (lambda: TextClassifier(encoder(), 3, dropout=0.0), classifier_inputs,
                   lambda: rng.integers(0, 3, (BATCH,)), keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
    "masked_lm": (lambda: MaskedLM(encoder()), mlm_inputs,
                  lambda: rng.integers(1, VOCAB, (BATCH, 3)), keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
    "causal_lm": (lambda: CausalLM(decoder()), clm_inputs,
                  lambda: rng.integers(1, VOCAB, (BATCH, LENGTH)), keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
}
HEAD_PATHS = {"classifier": ("classification_head/",), "masked_lm": ("mlm_head/",), "causal_lm": ()}


def values(model):
    return {w.path: keras.ops.convert_to_numpy(w).copy() for w in model.weights}


def predict(model, inputs):
    outputs = model(inputs, training=False)
    return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_only_adapters_and_the_head_train_and_the_merged_model_equals_the_adapted_one(name):
    make, inputs_of, labels_of, loss = MODELS[name]
    keras.utils.set_random_seed(1)
    model, inputs, labels = make(), inputs_of(), labels_of()
    base = predict(model, inputs)
    enable_lora(model, rank=4)
    np.testing.assert_allclose(predict(model, inputs), base, atol=1e-6)  # b = 0: the base model
    assert 0 < trainable_share(model) < 0.5
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss, jit_compile=False)
    before = values(model)
    model.fit(inputs, labels, batch_size=BATCH, epochs=3, verbose=0)
    after = values(model)
    changed = {path for path in before if not np.array_equal(before[path], after[path])}
    expected = {w.path for w in model.trainable_weights}
    assert changed == expected, changed ^ expected
    assert all("lora_kernel" in path or path.startswith(HEAD_PATHS[name]) for path in changed), changed
    assert any(path.endswith("lora_kernel_b") for path in changed)
    adapted = predict(model, inputs)
    assert not np.allclose(adapted, base, atol=1e-4)

    merged = merge_lora(model)
    assert not any("lora" in w.path for w in merged.weights)
    assert len(merged.weights) == len(model.weights) - 2 * len(lora_layers(model))
    np.testing.assert_allclose(predict(merged, inputs), adapted, atol=1e-5)


def test_lora_on_multitask_and_distillation_models():
    multitask = MultiTaskModel(encoder(), num_classes=3)
    inputs = {**mlm_inputs(), "clean_token_ids": classifier_inputs()["token_ids"]}
    base = predict(multitask, inputs)
    enable_lora(multitask, rank=2, targets="attention")
    trainable = {w.path for w in multitask.trainable_weights}
    name = multitask.encoder.name
    assert {p for p in trainable if p.startswith(name + "/")} == {
        f"{name}/block_{i}/self_attention/{layer}/lora_kernel_{ab}"
        for i in range(2) for layer in ("query_key_value", "output") for ab in "ab"
    }
    assert any(p.startswith("mlm_head/") for p in trainable) and any(p.startswith("classification_head/") for p in trainable)
    keras.tree.map_structure(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), predict(multitask, inputs), base)

    student, teacher = TextClassifier(encoder(1, 8), 3), TextClassifier(encoder(), 3)
    distillation = DistillationModel(student, teacher)
    distillation(classifier_inputs())
    enable_lora(distillation, rank=2, targets=["feed_forward"])
    assert all(not layer.lora_enabled for layer in lora_layers(teacher))  # the teacher stays as it is
    assert all(layer.lora_enabled for layer in lora_layers(student, "feed_forward"))
    assert not distillation.teacher.trainable_weights


def test_bad_lora_arguments_are_explained():
    model = TextClassifier(encoder(), 3)
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        enable_lora(model, 0)
    with pytest.raises(ValueError, match="Unknown LoRA target"):
        enable_lora(model, 2, targets="embeddings")
    with pytest.raises(ValueError, match="no zoo Encoder or Decoder"):
        enable_lora(keras.Sequential([keras.layers.Dense(2)]), 2)
    enable_lora(model, 2)
    with pytest.raises(ValueError, match="already enabled"):
        enable_lora(model, 2)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_int8_quantized_models_run_close_to_float32(name):
    make, inputs_of, _, _ = MODELS[name]
    keras.utils.set_random_seed(2)
    model, inputs = make(), inputs_of()
    expected = predict(model, inputs)
    with pytest.warns(UserWarning):  # Keras names the layers it cannot quantise (norms, dropout...)
        model.quantize("int8")
    assert {layer.quantization_mode for layer in lora_layers(model)} == {"int8"}
    actual = predict(model, inputs)
    assert not np.array_equal(actual, expected)
    np.testing.assert_allclose(actual, expected, atol=0.05 * np.abs(expected).max())
    assert (actual.argmax(-1) == expected.argmax(-1)).mean() >= 0.9


def test_quantized_causal_lm_generates_as_float32_does():
    keras.utils.set_random_seed(3)
    model = CausalLM(decoder())
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    expected = model.generate(prompts, max_new_tokens=6)
    with pytest.warns(UserWarning):
        model.quantize("int8")
    actual = model.generate(prompts, max_new_tokens=6)
    agreement = np.mean([a == e for row_a, row_e in zip(actual, expected) for a, e in zip(row_a, row_e)])
    assert agreement >= 0.8, (actual, expected)


def summary_text(model):
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line), line_length=120)
    return "\n".join(lines)


def test_summaries_list_the_backbone_blocks():
    for model, norms in ((CausalLM(decoder()), ["final_norm"]), (MaskedLM(encoder()), ["embeddings_norm"])):
        text = summary_text(model)
        for name in ("embeddings", "block_0", "block_1", *norms):
            assert f"└ {name}" in text, (name, text)
    # Keras' default (expand_nested=False) keeps one row per top-level layer.
    assert "block_0" not in summary_text_collapsed(CausalLM(decoder()))


def summary_text_collapsed(model):
    buffer = io.StringIO()
    model.summary(print_fn=lambda line, **_: buffer.write(line + "\n"), expand_nested=False, line_length=120)
    return buffer.getvalue()


# -- the recipes' lora_rank ------------------------------------------------------------------

SHAPE = dict(vocabulary_size=120, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32, sequence_length=16)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A gpt-clm and a bert-mlm checkpoint (model.keras, tokenizer/, config.json), untrained."""
    import recipes
    from zoo.data.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["the cat sat on the mat", "a dog ran", "def f(x): return x"] * 20, 120)
    paths = {}
    for name in ("gpt-clm", "bert-mlm"):
        recipe = recipes.get(name, **SHAPE, tokenizer="wordpiece")
        recipe.tokenizer = tokenizer
        paths[name] = str(tmp_path_factory.mktemp(name))
        recipe.save(recipe.build_model(total_steps=10), paths[name])
    return paths


@pytest.mark.parametrize("name,source,head", [("gpt-clm", "gpt-clm", None), ("bert-mlm", "bert-mlm", "mlm_head/"),
                                              ("classifier", "bert-mlm", "classification_head/")])
def test_recipe_lora_rank_adapts_the_checkpoint_and_saves_merged(name, source, head, checkpoints, capsys, tmp_path):
    import recipes
    from recipes.base import load_checkpoint

    extra = {"num_classes": 2} if name == "classifier" else {}
    recipe = recipes.get(name, **SHAPE, **extra, tokenizer="wordpiece", init_from=checkpoints[source], lora_rank=2)
    model = recipe.build_model(total_steps=10)
    assert "LoRA rank 2" in capsys.readouterr().out
    pretrained, _, _ = load_checkpoint(checkpoints[source])
    backbone = model.decoder if name == "gpt-clm" else model.encoder
    original = pretrained.decoder if name == "gpt-clm" else pretrained.encoder
    np.testing.assert_array_equal(  # the checkpoint's weights, under frozen kernels
        keras.ops.convert_to_numpy(backbone.blocks[1].attention.output_dense.kernel),
        keras.ops.convert_to_numpy(original.blocks[1].attention.output_dense.kernel),
    )
    trainable = {w.path for w in model.trainable_weights}
    assert all("lora_kernel" in path or (head and path.startswith(head)) for path in trainable), trainable
    assert len([p for p in trainable if "lora_kernel" in p]) == 2 * 4 * SHAPE["num_layers"]
    assert (head is None) or any(path.startswith(head) for path in trainable)

    # The saved checkpoint holds the merged kernels: a plain model with the adapted outputs.
    for layer in lora_layers(model):
        layer.lora_kernel_b.assign(np.full(layer.lora_kernel_b.shape, 0.05, "float32"))
    recipe.save(model, str(tmp_path / "run"))
    reloaded, _, _ = load_checkpoint(str(tmp_path / "run"))
    assert not any("lora" in w.path for w in reloaded.weights)
    ids = np.full((2, 16), 7, "int32")
    inputs = ids if name == "gpt-clm" else {"token_ids": ids, "padding_mask": np.ones((2, 16), bool)}
    if name == "bert-mlm":
        inputs["mask_positions"] = np.ones((2, 2), "int32")
    np.testing.assert_allclose(predict(reloaded, inputs), predict(model, inputs), atol=1e-5)


def test_lora_rank_without_a_checkpoint_is_refused():
    import recipes

    recipe = recipes.get("classifier", **SHAPE, num_classes=2, lora_rank=4)
    with pytest.raises(ValueError, match="lora_rank=4 fine-tunes pretrained weights: give init_from"):
        recipe.create_model()


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the SavedModel export traces TensorFlow graphs")
def test_a_lora_runs_savedmodel_export_equals_the_adapted_model(checkpoints, tmp_path):
    """The run's path: the checkpoint (`recipe.save`, adapters merged), then `zoo export`'s
    `export_run`; the SavedModel's logits are the in-memory adapted model's."""
    import recipes
    import tensorflow as tf

    from trainers.export_commands import export_run

    recipe = recipes.get("classifier", **SHAPE, num_classes=2, tokenizer="wordpiece", init_from=checkpoints["bert-mlm"],
                         lora_rank=2)
    model = recipe.build_model(total_steps=10)
    recipe.label_names = ["a", "b"]
    texts = ["the cat sat on the mat", "a dog ran", "def f(x): return x", "the"]
    inputs = keras.tree.map_structure(keras.ops.convert_to_numpy, recipe.preprocessor(texts))
    base = predict(model, inputs)
    generator = np.random.default_rng(5)
    for layer in lora_layers(model):  # adapters as training leaves them: b no longer zero
        layer.lora_kernel_b.assign(generator.normal(0, 0.5, layer.lora_kernel_b.shape).astype("float32"))
    adapted = predict(model, inputs)
    assert np.abs(adapted - base).max() > 1e-3  # the adapters change the outputs, far beyond the tolerance below

    recipe.save(model, str(tmp_path / "run"))
    out = export_run(str(tmp_path / "run"), out=str(tmp_path / "export" / "1"))
    assert any(layer.lora_enabled for layer in lora_layers(model))  # the in-memory model stays adapted
    loaded = tf.saved_model.load(out)
    from_text = loaded.signatures["classify"](text=tf.constant(texts))["logits"].numpy()
    np.testing.assert_allclose(from_text, adapted, atol=1e-5)
    ids = {key: tf.constant(np.asarray(value, "int32")) for key, value in inputs.items()}
    from_ids = loaded.signatures["classify_ids"](**ids)["logits"].numpy()
    np.testing.assert_allclose(from_ids, adapted, atol=1e-5)
