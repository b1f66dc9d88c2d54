"""The recipes' initialisation: GPT-2's and BERT's conventions, one seed for a reproducible model,
and no two weights alike."""

import math

import keras
import numpy as np
import pytest

import recipes
from tests.zoo.layers.test_initializers import assert_all_distinct, random_weights

# Keras' TruncatedNormal redraws values beyond two standard deviations: the standard deviation
# of what remains is this fraction of the nominal one.
TRUNCATED_STD_FACTOR = math.sqrt(1 - 2 * 2 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(2 / math.sqrt(2)))

SMALL = {"vocabulary_size": 2048, "num_layers": 3}
RECIPES = {
    "gpt-clm": SMALL,
    "bert-mlm": SMALL,
    "classifier": {**SMALL, "num_classes": 4},
    "multitask": {**SMALL, "num_classes": 4},
}


def create(name, **overrides):
    return recipes.get(name, **{**RECIPES[name], **overrides}).create_model()


def expected_std(name, path, num_layers, initializer_range=0.02):
    if name == "gpt-clm":
        residual = path.endswith(("self_attention/output/kernel", "feed_forward/output/kernel"))
        return initializer_range / math.sqrt(2 * num_layers) if residual else initializer_range
    return initializer_range * TRUNCATED_STD_FACTOR


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_weight_follows_its_rule(name):
    model = create(name)
    checked = 0
    # The trainable weights: non-trainable state (multitask's learned loss weights) has its own start.
    for weight in model.trainable_weights:
        value = keras.ops.convert_to_numpy(weight)
        if weight.path.endswith(("bias", "beta")):
            assert not value.any(), f"{weight.path}: biases start at 0"
        elif weight.path.endswith("gamma"):
            assert (value == 1).all(), f"{weight.path}: norm scales start at 1"
        else:
            # The sample standard deviation of n draws is within a few 1/sqrt(2n) of the truth.
            expected = expected_std(name, weight.path, RECIPES[name]["num_layers"])
            tolerance = 4 / math.sqrt(2 * value.size) + 0.01
            assert abs(value.std() / expected - 1) < tolerance, (weight.path, value.std(), expected)
            assert abs(value.mean()) < 4 * expected / math.sqrt(value.size), weight.path
            if name != "gpt-clm":
                assert np.abs(value).max() <= 2 * 0.02, f"{weight.path}: truncated at two standard deviations"
            checked += 1
    assert checked >= 3 * 4 + 2  # 4 kernels a block, and the embeddings


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_no_two_weights_alike(name):
    assert_all_distinct(random_weights(create(name)))


def test_initializer_range_and_depth_set_the_scales():
    model = create("gpt-clm", initializer_range=0.05, num_layers=8)
    output = keras.ops.convert_to_numpy(model.get_layer("decoder").blocks[7].feed_forward.output_dense.kernel)
    assert abs(output.std() / (0.05 / 4) - 1) < 0.05


@pytest.mark.parametrize("name", ["gpt-clm", "classifier"])
def test_the_seed_reproduces_the_model(name):
    first, again, other = (random_weights(create(name, seed=seed)) for seed in (3, 3, 4))
    assert first.keys() == again.keys() == other.keys()
    for path in first:
        np.testing.assert_array_equal(first[path], again[path], err_msg=path)
        assert not np.allclose(first[path], other[path]), path


@pytest.mark.parametrize("name", ["gpt-clm", "bert-mlm"])
def test_keras_file_keeps_the_initializers(name, tmp_path):
    model = create(name)
    backbone = getattr(model, "encoder", None) or getattr(model, "decoder")
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    reloaded = getattr(loaded, "encoder", None) or getattr(loaded, "decoder", None)
    for key in ("kernel_initializer", "residual_kernel_initializer"):
        assert reloaded.get_config()[key] == backbone.get_config()[key]
    config = backbone.get_config()["kernel_initializer"]
    assert config["config"]["seed"] == 0 and config["config"]["stddev"] == 0.02
    # The rebuilt layers draw what the saved ones drew: their initializers are the same, seed included.
    fresh = backbone.__class__.from_config(backbone.get_config())
    fresh.build((None, 8))
    originals = {w.path.split("/", 1)[1]: keras.ops.convert_to_numpy(w) for w in backbone.weights}
    for weight in fresh.weights:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight), originals[weight.path.split("/", 1)[1]])
