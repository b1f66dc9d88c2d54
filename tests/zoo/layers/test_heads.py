import numpy as np
from keras import ops

from tests.zoo.layers.layer_checks import check_layer
from zoo.layers import ClassificationHead, MaskedLMHead, TokenAndPositionEmbedding

rng = np.random.default_rng(4)
hidden = rng.normal(size=(2, 6, 8)).astype("float32")
positions = np.array([[0, 3, 5], [1, 1, 2]], "int32")


def numpy(t):
    return ops.convert_to_numpy(t)


def test_masked_lm_head_equals_all_position_logits_gathered():
    embedding = TokenAndPositionEmbedding(vocabulary_size=30, sequence_length=8, hidden_dim=8)
    embedding(np.zeros((1, 2), "int32"))
    head = MaskedLMHead(30, token_embedding=embedding.token_embedding)
    logits = numpy(head(hidden, mask_positions=positions))
    # Reference: transform every position, project with the tied table, then pick the masked ones.
    transformed = numpy(head.transform_norm(head.transform(hidden)))
    all_logits = transformed @ numpy(embedding.token_embedding.embeddings).T + numpy(head.output_bias)
    expected = np.take_along_axis(all_logits, positions[..., None], axis=1)
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    assert not head.output_projection  # tied: no projection of its own


def test_classification_head_mean_pooling_ignores_padding():
    head = ClassificationHead(3, pooling="mean")
    padding = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    changed = hidden.copy()
    changed[0, 3:] = 99.0
    np.testing.assert_allclose(
        numpy(head(changed, padding_mask=padding))[0], numpy(head(hidden, padding_mask=padding))[0], atol=1e-5
    )
    kernel, bias = (numpy(w) for w in head.output_dense.weights)
    np.testing.assert_allclose(numpy(head(hidden, padding_mask=padding))[0], hidden[0, :3].mean(0) @ kernel + bias, atol=1e-5)


def test_layer_contracts(tmp_path):
    check_layer(MaskedLMHead, {"vocabulary_size": 20}, {"inputs": hidden, "mask_positions": positions}, tmp_path, mixed_output_dtype="float32")
    for pooling in ("cls", "mean"):
        check_layer(
            ClassificationHead, {"num_classes": 3, "pooling": pooling},
            {"inputs": hidden, "padding_mask": np.ones((2, 6), "int32")}, tmp_path, mixed_output_dtype="float32",
        )
