import keras
import numpy as np

from zoo.optimization import make_optimizer


def test_gradient_accumulation_updates_every_n_steps_with_the_mean_gradient():
    def model_and_data(accumulation):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
        optimizer = make_optimizer(0.1, total_steps=100, weight_decay=0.0, clipnorm=0.0,
                                   gradient_accumulation_steps=accumulation, decay="constant")
        model.compile(optimizer=optimizer, loss="mse")
        return model

    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    y = np.ones((8, 1), "float32")
    accumulating = model_and_data(2)
    start = accumulating.get_weights()[0].copy()
    accumulating.train_on_batch(x[:4], y[:4])
    np.testing.assert_array_equal(accumulating.get_weights()[0], start)  # first micro-batch: no update
    accumulating.train_on_batch(x[4:], y[4:])
    assert not np.allclose(accumulating.get_weights()[0], start)
    # Two accumulated half batches make the same update as one full batch.
    whole = model_and_data(1)
    whole.train_on_batch(x, y)
    np.testing.assert_allclose(accumulating.get_weights()[0], whole.get_weights()[0], atol=1e-6)
