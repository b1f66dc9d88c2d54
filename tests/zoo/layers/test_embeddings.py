import numpy as np
from keras import ops

from tests.zoo.layers.layer_checks import check_layer
from zoo.layers import PositionEmbedding, RotaryEmbedding, SinusoidalPositionEncoding, TokenAndPositionEmbedding

rng = np.random.default_rng(1)


def numpy(t):
    return ops.convert_to_numpy(t)


def test_sinusoidal_encoding_equals_closed_form():
    length, hidden = 50, 10
    encoding = numpy(SinusoidalPositionEncoding()(np.zeros((1, length, hidden), "float32")))[0]
    for pos in range(length):
        for i in range(hidden // 2):
            angle = pos / 10000 ** (2 * i / hidden)
            assert abs(encoding[pos, 2 * i] - np.sin(angle)) < 1e-5
            assert abs(encoding[pos, 2 * i + 1] - np.cos(angle)) < 1e-5


def test_sinusoidal_encoding_start_index_continues_the_sequence():
    layer = SinusoidalPositionEncoding()
    full = numpy(layer(np.zeros((1, 8, 6), "float32")))
    np.testing.assert_allclose(numpy(layer(np.zeros((1, 3, 6), "float32"), start_index=5)), full[:, 5:], atol=1e-6)


def test_rotary_embedding_preserves_norms():
    x = rng.normal(size=(2, 9, 3, 8)).astype("float32")
    rotated = numpy(RotaryEmbedding()(x))
    np.testing.assert_allclose(np.linalg.norm(rotated, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
    assert not np.allclose(rotated[:, 1:], x[:, 1:])
    np.testing.assert_allclose(rotated[:, 0], x[:, 0], atol=1e-6)  # position 0 is not rotated


def test_rotary_dot_product_depends_only_on_relative_position():
    layer = RotaryEmbedding()
    q = rng.normal(size=(8,)).astype("float32")
    k = rng.normal(size=(8,)).astype("float32")
    length = 12
    queries = numpy(layer(np.broadcast_to(q, (1, length, 1, 8))))[0, :, 0]
    keys = numpy(layer(np.broadcast_to(k, (1, length, 1, 8))))[0, :, 0]
    scores = queries @ keys.T  # scores[m, n] = <R_m q, R_n k>
    for offset in range(-4, 5):
        diagonal = np.diagonal(scores, offset=offset)
        np.testing.assert_allclose(diagonal, diagonal[0], atol=1e-4)
    assert not np.allclose(np.diagonal(scores, 0)[0], np.diagonal(scores, 3)[0], atol=1e-3)


def test_rotary_start_index_matches_slice_of_longer_sequence():
    layer = RotaryEmbedding()
    x = rng.normal(size=(1, 6, 2, 4)).astype("float32")
    full = numpy(layer(x))
    np.testing.assert_allclose(numpy(layer(x[:, 4:], start_index=4)), full[:, 4:], atol=1e-6)


def test_position_embedding_slices_its_table():
    layer = PositionEmbedding(sequence_length=10)
    out = numpy(layer(np.zeros((2, 4, 3), "float32"), start_index=5))
    table = numpy(layer.position_embeddings)
    np.testing.assert_allclose(out[0], table[5:9])
    np.testing.assert_allclose(out[1], table[5:9])


def test_token_and_position_embedding_sums_the_tables():
    layer = TokenAndPositionEmbedding(vocabulary_size=20, sequence_length=8, hidden_dim=4, num_segments=2)
    ids = np.array([[3, 1, 4, 1]], "int32")
    segments = np.array([[0, 0, 1, 1]], "int32")
    out = numpy(layer(ids, segment_ids=segments))
    tokens = numpy(layer.token_embedding.embeddings)
    positions = numpy(layer.position_embedding.position_embeddings)
    seg = numpy(layer.segment_embedding.embeddings)
    np.testing.assert_allclose(out[0], tokens[ids[0]] + positions[:4] + seg[segments[0]], atol=1e-6)
    # The token table doubles as a tied output projection.
    hidden = rng.normal(size=(1, 4)).astype("float32")
    np.testing.assert_allclose(numpy(layer.token_embedding(hidden, reverse=True)), hidden @ tokens.T, atol=1e-5)


def test_layer_contracts(tmp_path):
    hidden = rng.normal(size=(2, 5, 8)).astype("float32")
    check_layer(PositionEmbedding, {"sequence_length": 16}, {"inputs": hidden}, tmp_path)
    check_layer(SinusoidalPositionEncoding, {}, {"inputs": hidden}, tmp_path, expect_trainable=False)
    check_layer(RotaryEmbedding, {}, {"inputs": hidden.reshape(2, 5, 2, 4)}, tmp_path, expect_trainable=False)
    ids = rng.integers(0, 30, size=(2, 5)).astype("int32")
    for kind in ("learned", "sinusoidal", "none"):
        check_layer(
            TokenAndPositionEmbedding,
            {"vocabulary_size": 30, "sequence_length": 16, "hidden_dim": 8, "position_embedding_type": kind},
            {"token_ids": ids},
            tmp_path,
        )
    check_layer(
        TokenAndPositionEmbedding,
        {"vocabulary_size": 30, "sequence_length": 16, "hidden_dim": 8, "num_segments": 2},
        {"token_ids": ids, "segment_ids": (ids % 2).astype("int32")},
        tmp_path,
    )
