"""The position-wise feed-forward network of a transformer block."""

import keras
from keras import ops

from zoo.layers.initializers import clone_initializer

ACTIVATIONS = ("gelu", "gelu_approximate", "relu", "swiglu")


@keras.saving.register_keras_serializable(package="zoo")
class FeedForward(keras.layers.Layer):
    """`dense(hidden -> intermediate) -> activation -> dropout -> dense(intermediate -> hidden)`.

    Args:
        intermediate_dim: width of the inner layer.
        activation: "gelu" (exact, erf: BERT), "gelu_approximate" (tanh: GPT-2), "relu", or
            "swiglu" (`silu(x W_gate) * (x W_up)`, as in LLaMA; adds a gate projection).
        dropout: dropout rate after the activation.
        use_bias: whether the projections have biases.
        kernel_initializer, bias_initializer: initialisers for the projections (each projection
            gets its own clone, seeded from this one's seed and the projection's name).
        output_kernel_initializer: initialiser of the output projection (GPT-2 scales the
            projections into the residual stream down); defaults to `kernel_initializer`.

    Call arguments:
        inputs: `[..., hidden]`.
        training: enables dropout.

    Example:
    >>> FeedForward(intermediate_dim=32, activation="swiglu")(keras.ops.ones((2, 3, 8))).shape
    (2, 3, 8)
    """

    def __init__(
        self,
        intermediate_dim,
        activation="gelu",
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        output_kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(f"Unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}.")
        self.intermediate_dim = intermediate_dim
        self.activation = activation
        self.dropout = dropout
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.output_kernel_initializer = (
            None if output_kernel_initializer is None else keras.initializers.get(output_kernel_initializer)
        )
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def _dense(self, units, name, kernel_initializer=None):
        return keras.layers.Dense(
            units,
            use_bias=self.use_bias,
            kernel_initializer=clone_initializer(kernel_initializer or self.kernel_initializer, name),
            bias_initializer=clone_initializer(self.bias_initializer, name),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, inputs_shape):
        hidden_dim = inputs_shape[-1]
        self.intermediate_dense = self._dense(self.intermediate_dim, "intermediate")
        self.intermediate_dense.build(inputs_shape)
        self.gate_dense = None
        if self.activation == "swiglu":
            self.gate_dense = self._dense(self.intermediate_dim, "gate")
            self.gate_dense.build(inputs_shape)
        self.output_dense = self._dense(hidden_dim, "output", self.output_kernel_initializer)
        self.output_dense.build(tuple(inputs_shape[:-1]) + (self.intermediate_dim,))
        self.built = True

    def projections(self):
        """The Dense sublayers by name: `intermediate`, `gate` (swiglu only), `output`. What LoRA
        adapts (`zoo.models.lora`)."""
        layers = {"intermediate": self.intermediate_dense, "gate": self.gate_dense, "output": self.output_dense}
        return {name: layer for name, layer in layers.items() if layer is not None}

    def call(self, inputs, training=None):
        hidden = self.intermediate_dense(inputs)
        if self.activation == "swiglu":
            hidden = ops.silu(self.gate_dense(inputs)) * hidden
        elif self.activation == "relu":
            hidden = ops.relu(hidden)
        else:
            hidden = ops.gelu(hidden, approximate=self.activation == "gelu_approximate")
        return self.output_dense(self.dropout_layer(hidden, training=training))

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            intermediate_dim=self.intermediate_dim,
            activation=self.activation,
            dropout=self.dropout,
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            output_kernel_initializer=(
                None if self.output_kernel_initializer is None
                else keras.initializers.serialize(self.output_kernel_initializer)
            ),
        )
        return config
