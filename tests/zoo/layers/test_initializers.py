"""Every weight gets its own initial values: a layer or backbone built on its own, with Keras'
default initializer, and seeded initializers that rebuild the same weights."""

import itertools

import keras
import numpy as np
import pytest

from zoo.layers import FeedForward, MultiHeadAttention, TransformerDecoderBlock
from zoo.layers.initializers import clone_initializer, derive_seed
from zoo.models import Decoder, Encoder


def random_weights(layer):
    """{path: values} of the weights that are drawn at random (not the zero biases, unit norms)."""
    values = {weight.path: keras.ops.convert_to_numpy(weight) for weight in layer.weights}
    return {path: value for path, value in values.items() if np.unique(value).size > 2}


def assert_all_distinct(weights):
    assert len(weights) >= 2
    for (a, x), (b, y) in itertools.combinations(weights.items(), 2):
        if x.shape == y.shape:
            assert not np.allclose(x, y), f"{a} and {b} start with the same values"
        # Nor a reshape or a slice of another (one seed for two shapes draws the same stream);
        # float32 draws coincide by chance only rarely.
        shared = np.intersect1d(x.ravel(), y.ravel()).size
        assert shared < 0.01 * min(x.size, y.size), f"{a} and {b} share {shared} values"


def test_seed_derivation_is_stable_and_distinct():
    assert derive_seed(0, "block_0") == derive_seed(0, "block_0")
    seeds = {derive_seed(seed, name) for seed in (0, 1) for name in ("block_0", "block_1", "embeddings")}
    assert len(seeds) == 6 and all(0 <= s < 2**31 for s in seeds)


def test_clone_keeps_the_distribution_and_changes_only_the_seed():
    original = keras.initializers.TruncatedNormal(stddev=0.02, seed=7)
    clone = clone_initializer(original, "block_0")
    assert clone.get_config() == {**original.get_config(), "seed": derive_seed(7, "block_0")}
    assert clone_initializer(original, "block_0").get_config() == clone.get_config()
    zeros = keras.initializers.Zeros()
    assert clone_initializer(zeros, "x") is zeros


@pytest.mark.parametrize("backbone", [Encoder, Decoder])
def test_backbone_blocks_start_from_different_weights(backbone):
    # The default initializer, no seed: every block used to receive the very same values.
    model = backbone(100, 16, 2, 8, 2, 16)
    model(np.ones((2, 5), "int32"))
    weights = random_weights(model)
    assert any("block_1" in path for path in weights)
    assert_all_distinct(weights)


def test_layers_alone_draw_each_weight_independently():
    swiglu = FeedForward(32, activation="swiglu")  # gate and up projections share a shape
    swiglu(np.ones((2, 3, 8), "float32"))
    assert_all_distinct(random_weights(swiglu))
    attention = MultiHeadAttention(2)
    attention(np.ones((1, 4, 8), "float32"), np.ones((1, 3, 8), "float32"))  # cross-attention: 3 kernels
    assert_all_distinct(random_weights(attention))
    block = TransformerDecoderBlock(2, 16, cross_attention=True)
    block(np.ones((1, 4, 8), "float32"), encoder_outputs=np.ones((1, 3, 8), "float32"))
    assert_all_distinct(random_weights(block))


def test_same_seed_same_weights_other_seed_other_weights():
    def build(seed):
        model = Decoder(
            100, 16, 2, 8, 2, 16, kernel_initializer=keras.initializers.RandomNormal(stddev=0.02, seed=seed),
            residual_kernel_initializer=keras.initializers.RandomNormal(stddev=0.01, seed=seed), name="decoder",
        )
        model(np.ones((1, 4), "int32"))
        return random_weights(model)

    first, again, other = build(1), build(1), build(2)
    assert first.keys() == again.keys() == other.keys()
    for path in first:
        np.testing.assert_array_equal(first[path], again[path], err_msg=path)
        assert not np.allclose(first[path], other[path]), path


def test_residual_initializer_reaches_only_the_output_projections():
    model = Decoder(
        100, 16, 2, 32, 2, 64, kernel_initializer=keras.initializers.Constant(1.0),
        residual_kernel_initializer=keras.initializers.Constant(2.0),
    )
    model(np.ones((1, 4), "int32"))
    for weight in model.weights:
        value = np.unique(keras.ops.convert_to_numpy(weight))
        if weight.path.endswith(("output_kernel", "output/kernel")):
            assert value.tolist() == [2.0], weight.path
        elif weight.path.endswith(("query_key_value/kernel", "intermediate/kernel", "embeddings")):
            assert value.tolist() == [1.0], weight.path
