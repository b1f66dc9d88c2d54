"""GPT-style causal language model task: a Decoder with next-token logits and `generate()`."""

import keras
import numpy as np

from zoo.models.decoder import Decoder  # noqa: F401 (the docstring example uses it)
from zoo.models.generation import compile_function, generate_tokens
from zoo.models.metrics import TokenLossSharing

_MIN_BUFFER = 16


class _FunctionCache:
    """Compiled generation functions by shape. Not a dict: TensorFlow wraps dict attributes for
    tracking and then refuses to save a model holding tf.functions keyed by tuples."""

    def __init__(self):
        self.functions = {}


def _buffer_length(needed, sequence_length):
    """Generation buffers come in powers of two (at least 16, at most the context length):
    one compiled function serves every request that fits, instead of one per exact length."""
    length = _MIN_BUFFER
    while length < needed:
        length *= 2
    return min(length, sequence_length)


@keras.saving.register_keras_serializable(package="zoo")
class CausalLM(TokenLossSharing, keras.Model):
    """Next-token prediction: `token_ids [batch, sequence]` to float32 logits `[batch, sequence, vocabulary]`.

    Args:
        decoder: a `zoo.models.Decoder`.

    Example:
    >>> decoder = Decoder(vocabulary_size=50, sequence_length=32, num_layers=1, hidden_dim=8,
    ...                   num_heads=2, intermediate_dim=16)
    >>> model = CausalLM(decoder)
    >>> len(model.generate([[1, 2, 3]], max_new_tokens=4)[0])
    4
    """

    def __init__(self, decoder, **kwargs):
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        logits = decoder(token_ids)
        super().__init__(inputs=token_ids, outputs=logits, **kwargs)
        self.decoder = decoder
        self._generate_functions = _FunctionCache()
        self.generate_traces = 0  # how many times a generation function was traced (tests read it)

    def get_config(self):
        return {"decoder": keras.saving.serialize_keras_object(self.decoder), "name": self.name}

    def summary(self, line_length=None, positions=None, print_fn=None, expand_nested=True, **kwargs):
        """Keras' summary, by default with the decoder's embeddings, blocks and norm listed."""
        return super().summary(line_length, positions, print_fn, expand_nested=expand_nested, **kwargs)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["decoder"] = keras.saving.deserialize_keras_object(config["decoder"])
        return cls(**config)

    def _generate_function(self, batch_size, length):
        key = (batch_size, length)
        functions = self._generate_functions.functions
        if key not in functions:

            def generate(token_ids, prompt_lengths, max_new_tokens, end_token_id, temperature, top_k, top_p, seed):
                self.generate_traces += 1  # runs only while tracing
                return generate_tokens(
                    self.decoder, token_ids, prompt_lengths, max_new_tokens, end_token_id=end_token_id,
                    temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                )

            functions[key] = compile_function(generate, self)
        return functions[key]

    def generate(
        self, prompts, max_new_tokens=32, temperature=0.0, top_k=0, top_p=1.0, seed=0, end_token_id=None, pad_token_id=0
    ):
        """Continues each prompt; returns the new token ids of each (the prompt not included).

        Args:
            prompts: a list of token-id lists, of any lengths (each non-empty).
            max_new_tokens: tokens to add at most.
            temperature: 0 for greedy decoding, else the sampling temperature.
            top_k: sample among the k most likely tokens (0: all).
            top_p: sample among the most likely tokens holding this probability mass (1: all).
            seed: the same seed, prompts and settings give the same text.
            end_token_id: stop a row after this token (it is included in the output).

        Prompts longer than `sequence_length - max_new_tokens` keep their last tokens. One
        function is compiled per (batch size, buffer length) and reused by later calls.
        """
        sequence_length = self.decoder.sequence_length
        if not 0 < max_new_tokens < sequence_length:
            raise ValueError(f"max_new_tokens must be between 1 and {sequence_length - 1}, got {max_new_tokens}.")
        if not prompts or any(len(prompt) == 0 for prompt in prompts):
            raise ValueError("Every prompt needs at least one token (start empty text with the end-of-text token).")
        keep = sequence_length - max_new_tokens
        prompts = [list(prompt)[-keep:] for prompt in prompts]
        lengths = np.array([len(prompt) for prompt in prompts], "int32")
        buffer_length = _buffer_length(int(lengths.max()) + max_new_tokens, sequence_length)
        buffer = np.full((len(prompts), buffer_length), pad_token_id, "int32")
        for row, prompt in enumerate(prompts):
            buffer[row, : len(prompt)] = prompt
        function = self._generate_function(len(prompts), buffer_length)
        output = function(
            buffer,
            lengths,
            np.int32(max_new_tokens),
            np.int32(-1 if end_token_id is None else end_token_id),
            np.float32(temperature),
            np.int32(top_k),
            np.float32(top_p),
            np.int32(seed),
        )
        output = keras.ops.convert_to_numpy(output)
        results = []
        for row, length in enumerate(lengths):
            new = output[row, length : length + max_new_tokens].tolist()
            if end_token_id is not None and end_token_id in new:
                new = new[: new.index(end_token_id) + 1]
            results.append(new)
        return results
