import keras
import numpy as np
import pytest
from keras import ops

from tests.zoo.layers.layer_checks import check_layer
from zoo.layers import MultiHeadAttention
from zoo.layers.initializers import clone_initializer

BATCH, LENGTH, HIDDEN, HEADS = 2, 7, 16, 4
rng = np.random.default_rng(0)
x = rng.normal(size=(BATCH, LENGTH, HIDDEN)).astype("float32")
source = rng.normal(size=(BATCH, 5, 12)).astype("float32")


def numpy(t):
    return ops.convert_to_numpy(t)


def keras_reference(ours, cross=False):
    """keras.layers.MultiHeadAttention holding the same weights as `ours`."""
    reference = keras.layers.MultiHeadAttention(num_heads=HEADS, key_dim=HIDDEN // HEADS)
    if cross:
        reference(x, source)
        q, q_bias = ours.query_dense.get_weights()
        kv, kv_bias = ours.key_value_dense.get_weights()
        k, v, k_bias, v_bias = kv[:, :HEADS], kv[:, HEADS:], kv_bias[:HEADS], kv_bias[HEADS:]
    else:
        reference(x, x)
        qkv, qkv_bias = ours.query_key_value_dense.get_weights()
        q, k, v = np.split(qkv, 3, axis=1)
        q_bias, k_bias, v_bias = np.split(qkv_bias, 3, axis=0)
    # Keras' order: query, key, value and output projections, each kernel then bias.
    reference.set_weights([q, q_bias, k, k_bias, v, v_bias, *ours.output_dense.get_weights()])
    return reference


def test_equals_keras_attention_without_masks():
    ours = MultiHeadAttention(num_heads=HEADS)
    actual = numpy(ours(x))
    np.testing.assert_allclose(actual, numpy(keras_reference(ours)(x, x)), atol=1e-5)


def test_equals_keras_attention_with_padding_and_causal_masks():
    ours = MultiHeadAttention(num_heads=HEADS, causal=True)
    padding = np.ones((BATCH, LENGTH), bool)
    padding[1, 4:] = False
    actual = numpy(ours(x, padding_mask=padding))
    reference = keras_reference(ours)
    expected = numpy(reference(x, x, attention_mask=np.broadcast_to(padding[:, None, :], (BATCH, LENGTH, LENGTH)), use_causal_mask=True))
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_equals_keras_attention_with_explicit_attention_mask():
    ours = MultiHeadAttention(num_heads=HEADS)
    mask = rng.random((BATCH, LENGTH, LENGTH)) > 0.3
    mask[:, :, 0] = True  # every query keeps at least one key
    np.testing.assert_allclose(
        numpy(ours(x, attention_mask=mask)), numpy(keras_reference(ours)(x, x, attention_mask=mask)), atol=1e-5
    )


def test_cross_attention_equals_keras_attention():
    ours = MultiHeadAttention(num_heads=HEADS)
    padding = np.ones((BATCH, 5), bool)
    padding[0, 3:] = False
    actual = numpy(ours(x, source, padding_mask=padding))
    mask = np.broadcast_to(padding[:, None, :], (BATCH, LENGTH, 5))
    np.testing.assert_allclose(actual, numpy(keras_reference(ours, cross=True)(x, source, attention_mask=mask)), atol=1e-5)


@pytest.mark.parametrize("use_rotary", [False, True])
def test_causality(use_rotary):
    layer = MultiHeadAttention(num_heads=HEADS, causal=True, use_rotary=use_rotary)
    before = numpy(layer(x))
    for t in range(LENGTH - 1):
        changed = x.copy()
        changed[:, t + 1 :] = rng.normal(size=changed[:, t + 1 :].shape)
        after = numpy(layer(changed))
        np.testing.assert_allclose(after[:, : t + 1], before[:, : t + 1], atol=1e-6)
        assert not np.allclose(after[:, t + 1 :], before[:, t + 1 :], atol=1e-3)


def test_padded_positions_do_not_leak_into_real_positions():
    layer = MultiHeadAttention(num_heads=HEADS)
    padding = np.ones((BATCH, LENGTH), bool)
    padding[:, 5:] = False
    changed = x.copy()
    changed[:, 5:] = 100 * rng.normal(size=changed[:, 5:].shape)
    np.testing.assert_allclose(
        numpy(layer(changed, padding_mask=padding))[:, :5], numpy(layer(x, padding_mask=padding))[:, :5], atol=1e-5
    )


@pytest.mark.parametrize("num_key_value_heads,use_rotary", [(None, False), (2, True), (1, False)])
def test_kv_cache_decoding_equals_full_causal_pass(num_key_value_heads, use_rotary):
    layer = MultiHeadAttention(num_heads=HEADS, num_key_value_heads=num_key_value_heads, causal=True, use_rotary=use_rotary)
    full = numpy(layer(x))
    kv_heads = num_key_value_heads or HEADS
    cache = ops.zeros((BATCH, 2, LENGTH, kv_heads, HIDDEN // HEADS))
    # Prefill the first 3 positions at once, then decode one token at a time.
    prefill, cache = layer(x[:, :3], cache=cache, cache_index=0)
    outputs = [numpy(prefill)]
    for index in range(3, LENGTH):
        step, cache = layer(x[:, index : index + 1], cache=cache, cache_index=index)
        outputs.append(numpy(step))
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, atol=1e-5)


def test_grouped_query_attention_equals_attention_with_repeated_key_value_heads():
    grouped = MultiHeadAttention(num_heads=HEADS, num_key_value_heads=2)
    grouped(x)
    full = MultiHeadAttention(num_heads=HEADS)
    full(x)
    qkv, bias = grouped.query_key_value_dense.get_weights()
    # Query head h uses key/value head h // 2.
    repeat = lambda a: np.repeat(a, 2, axis=0 if a.ndim == 2 else 1)  # noqa: E731
    q, k, v = qkv[:, :HEADS], qkv[:, HEADS : HEADS + 2], qkv[:, HEADS + 2 :]
    qb, kb, vb = bias[:HEADS], bias[HEADS : HEADS + 2], bias[HEADS + 2 :]
    full.set_weights([
        np.concatenate([q, repeat(k), repeat(v)], axis=1),
        np.concatenate([qb, repeat(kb), repeat(vb)], axis=0),
        *grouped.output_dense.get_weights(),
    ])
    np.testing.assert_allclose(numpy(grouped(x)), numpy(full(x)), atol=1e-5)


def test_attention_dropout_only_in_training():
    layer = MultiHeadAttention(num_heads=HEADS, dropout=0.5)
    np.testing.assert_allclose(numpy(layer(x)), numpy(layer(x, training=False)))
    assert not np.allclose(numpy(layer(x, training=True)), numpy(layer(x)))


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        MultiHeadAttention(num_heads=4, num_key_value_heads=3)
    layer = MultiHeadAttention(num_heads=HEADS, causal=True)
    with pytest.raises(ValueError, match="cache_index"):
        layer(x, cache=ops.zeros((BATCH, 2, LENGTH, HEADS, 4)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_heads": 2, "causal": True},
        {"num_heads": 4, "num_key_value_heads": 2, "use_rotary": True, "use_bias": False},
    ],
)
def test_layer_contract_self_attention(kwargs, tmp_path):
    padding = np.ones((BATCH, LENGTH), "int32")
    check_layer(MultiHeadAttention, kwargs, {"query": x, "padding_mask": padding}, tmp_path)


def test_layer_contract_cross_attention(tmp_path):
    check_layer(MultiHeadAttention, {"num_heads": 2, "output_dim": 6}, {"query": x, "value": source}, tmp_path)


# -- the projections are Keras EinsumDense layers --------------------------------------------


def test_projections_draw_the_values_of_the_former_raw_weights():
    # Each projection's initializer is cloned under the name its weight had when the layer held
    # it directly (qkv_kernel, output_kernel, ...): a seeded model starts from the same values.
    initializer = keras.initializers.RandomNormal(stddev=0.02, seed=5)
    output_initializer = keras.initializers.RandomNormal(stddev=0.01, seed=6)
    layer = MultiHeadAttention(num_heads=HEADS, num_key_value_heads=2, kernel_initializer=initializer,
                               output_kernel_initializer=output_initializer)
    layer(x)
    expected_qkv = clone_initializer(initializer, "qkv_kernel")((HIDDEN, HEADS + 4, HIDDEN // HEADS))
    expected_output = clone_initializer(output_initializer, "output_kernel")((HEADS, HIDDEN // HEADS, HIDDEN))
    np.testing.assert_array_equal(numpy(layer.query_key_value_dense.kernel), numpy(expected_qkv))
    np.testing.assert_array_equal(numpy(layer.output_dense.kernel), numpy(expected_output))
    cross = MultiHeadAttention(num_heads=HEADS, kernel_initializer=initializer)
    cross(x, source)
    for dense, name, shape in ((cross.query_dense, "query_kernel", (HIDDEN, HEADS, 4)),
                               (cross.key_value_dense, "key_value_kernel", (12, 2 * HEADS, 4))):
        np.testing.assert_array_equal(numpy(dense.kernel), numpy(clone_initializer(initializer, name)(shape)))


def test_lora_starts_as_the_base_layer_and_its_update_reaches_every_path():
    layer = MultiHeadAttention(num_heads=HEADS, causal=True)
    before = numpy(layer(x))
    for dense in layer.projections().values():
        dense.enable_lora(2)
    np.testing.assert_allclose(numpy(layer(x)), before, atol=1e-6)  # B starts at zero
    for dense in layer.projections().values():
        dense.lora_kernel_b.assign(rng.normal(size=dense.lora_kernel_b.shape).astype("float32") * 0.1)
    adapted = numpy(layer(x))
    assert not np.allclose(adapted, before, atol=1e-3)
    # One token of one row takes the multiply-and-sum projection: the same update applies there.
    np.testing.assert_allclose(numpy(layer(x[:1, :1])), adapted[:1, :1], atol=1e-5)
    assert [w.path.rsplit("/", 2)[-2:] for w in layer.trainable_weights if "lora" not in w.path] == [
        ["query_key_value", "bias"], ["output", "bias"]
    ]  # enable_lora froze both kernels


def test_int8_quantization_stays_close_to_float():
    layer = MultiHeadAttention(num_heads=HEADS, causal=True)
    expected = numpy(layer(x))
    for dense in layer.projections().values():
        dense.quantize("int8")
    assert all(dense.quantization_mode == "int8" for dense in layer.projections().values())
    actual = numpy(layer(x))
    assert not np.array_equal(actual, expected)  # really quantised
    np.testing.assert_allclose(actual, expected, atol=0.05 * np.abs(expected).max())
    np.testing.assert_allclose(numpy(layer(x[:1, :1])), actual[:1, :1], atol=1e-5)  # the one-token path too


# -- the fused path: keras.ops.dot_product_attention ------------------------------------------


def _twins(**kwargs):
    """The same attention layer (same weights) with the einsum and with the fused path."""
    einsum = MultiHeadAttention(num_heads=HEADS, attention_implementation="einsum", **kwargs)
    fused = MultiHeadAttention(num_heads=HEADS, attention_implementation="fused", **kwargs)
    return einsum, fused


@pytest.mark.parametrize(
    "kwargs", [{}, {"causal": True}, {"causal": True, "num_key_value_heads": 2, "use_rotary": True},
               {"num_key_value_heads": 1}],
)
def test_fused_attention_equals_einsum_attention(kwargs):
    einsum, fused = _twins(**kwargs)
    einsum(x), fused(x)
    fused.set_weights(einsum.get_weights())
    padding = np.ones((BATCH, LENGTH), bool)
    padding[1, 5:] = False
    mask = rng.random((BATCH, LENGTH, LENGTH)) > 0.3
    mask[:, :, 0] = True
    for call_kwargs in ({}, {"padding_mask": padding}, {"attention_mask": mask}, {"padding_mask": padding, "attention_mask": mask}):
        np.testing.assert_allclose(numpy(fused(x, **call_kwargs)), numpy(einsum(x, **call_kwargs)), atol=1e-5)


def test_fused_cross_attention_equals_einsum_cross_attention():
    einsum, fused = _twins()
    einsum(x, source), fused(x, source)
    fused.set_weights(einsum.get_weights())
    padding = np.ones((BATCH, 5), bool)
    padding[0, 2:] = False
    np.testing.assert_allclose(
        numpy(fused(x, source, padding_mask=padding)), numpy(einsum(x, source, padding_mask=padding)), atol=1e-5
    )


@pytest.mark.parametrize("num_key_value_heads", [None, 2])
def test_fused_kv_cache_decoding_equals_einsum_full_pass(num_key_value_heads):
    einsum, fused = _twins(causal=True, num_key_value_heads=num_key_value_heads, use_rotary=True)
    full = numpy(einsum(x))
    fused(x)
    fused.set_weights(einsum.get_weights())
    kv_heads = num_key_value_heads or HEADS
    cache = ops.zeros((BATCH, 2, LENGTH, kv_heads, HIDDEN // HEADS))
    prefill, cache = fused(x[:, :3], cache=cache, cache_index=0)
    outputs = [numpy(prefill)]
    for index in range(3, LENGTH):
        step, cache = fused(x[:, index : index + 1], cache=cache, cache_index=index)
        outputs.append(numpy(step))
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, atol=1e-5)


def test_attention_implementation_is_checked_and_kept():
    with pytest.raises(ValueError, match="attention_implementation"):
        MultiHeadAttention(num_heads=HEADS, attention_implementation="flash")
    layer = MultiHeadAttention(num_heads=HEADS, dropout=0.5, attention_implementation="fused")
    assert MultiHeadAttention.from_config(layer.get_config()).attention_implementation == "fused"
    # Attention dropout exists only on the einsum path: training steps with dropout take it.
    inference = numpy(layer(x, training=False))
    assert not np.allclose(numpy(layer(x, training=True)), inference)
