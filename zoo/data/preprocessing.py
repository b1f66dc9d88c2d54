"""Preprocessors: the one place where text becomes the ids a model takes.

Every task has one (`task.preprocessor`), a Keras layer of TensorFlow ops around the
task's tokenizer. The tf.data pipelines, generation, evaluation and every export signature
call it, so training, evaluation and serving see the same ids by construction.

- `EncoderPreprocessor` (text classification): a text becomes `[CLS] tokens [SEP]`, keeping its
  first `sequence_length - 2` tokens, right-padded with `[PAD]`.
- `MaskedLMPreprocessor` (masked language modelling): the same packing, plus BERT's dynamic masking
  (of the selected tokens, 80% become `[MASK]`, 10% a random token, 10% stay) and the
  tokenization of raw text holding literal "[MASK]" markers (the fill-mask signature).
- `CausalLMPreprocessor` (causal language modelling): a document becomes its tokens followed by the end-of-document
  token `[SEP]`; training concatenates those into one stream cut into blocks (see
  `zoo.data.pipelines`), and a prompt becomes `[SEP]` followed by its tokens, as a document
  starts in that stream.

The sequence length and the truncation rule are decided here, once: they are the layer's
config, saved beside every checkpoint (`preprocessor.json`, next to `tokenizer/`) and in every
export's metadata. `load_preprocessor(directory)` rebuilds the layer from a checkpoint
directory without the code that trained it.

Example:
>>> preprocessor = EncoderPreprocessor(tokenizer, sequence_length=8)
>>> preprocessor(["a short text"])  # {"token_ids": [1, 8] int32, "padding_mask": [1, 8] bool}
"""

import json
import math
import os

import keras
import tensorflow as tf

PREPROCESSOR_FILE = "preprocessor.json"
FORMAT = "zoo.preprocessor/1"


class Preprocessor(keras.layers.Layer):
    """What every preprocessor shares: the tokenizer, `sequence_length` and the special ids.

    Args:
        tokenizer: the recipe's tokenizer (`zoo.data.tokenizer`), with `[PAD]`, `[CLS]`,
            `[SEP]` and `[MASK]` in its vocabulary.
        sequence_length: T, the length of the model's inputs.
    """

    truncation = None  # which tokens a text longer than the model's input keeps (documented per class)

    def __init__(self, tokenizer, sequence_length, **kwargs):
        kwargs.setdefault("trainable", False)
        kwargs.setdefault("dtype", "int32")
        super().__init__(**kwargs)
        if int(sequence_length) < self.minimum_length:
            raise ValueError(f"sequence_length must be >= {self.minimum_length}, got {sequence_length}.")
        self.tokenizer = tokenizer
        self.sequence_length = int(sequence_length)
        self.pad_id, self.cls_id, self.sep_id, self.mask_id = (
            int(tokenizer.token_to_id(token)) for token in ("[PAD]", "[CLS]", "[SEP]", "[MASK]")
        )
        self.built = True

    minimum_length = 1

    def __call__(self, text, *args, **kwargs):
        # Keras layers take tensors as positional inputs; a preprocessor also takes Python text.
        if isinstance(text, (str, bytes, list, tuple)):
            text = tf.convert_to_tensor(text, tf.string)
        return super().__call__(text, *args, **kwargs)

    @property
    def vocabulary_size(self):
        return int(self.tokenizer.vocabulary_size())

    def tokenize(self, text):
        """int32 token ids of `text`: ragged `[B, (n)]` for strings `[B]`, `[n]` for one string.

        No special token is added, and none is recognised in the text.
        """
        text = tf.convert_to_tensor(text, tf.string)
        ids = self.tokenizer(text)
        if isinstance(ids, (list, tuple)):  # keras-hub hands eager ragged results back as Python lists
            ids = tf.ragged.constant(ids, tf.int32, ragged_rank=1, inner_shape=()) if text.shape.rank else tf.constant(ids, tf.int32)
        if text.shape.rank != 0 and not isinstance(ids, tf.RaggedTensor):  # a tokenizer that pads
            ids = tf.RaggedTensor.from_tensor(ids, padding=self.pad_id)
        return tf.cast(ids, tf.int32)

    def document_ids(self, document):
        """A document in a language-model token stream: its tokens, then the end token `[SEP]`: `[n + 1]` for a string, ragged `[B, (n + 1)]` for `[B]`."""
        ids = self.tokenize(document)
        if isinstance(ids, tf.RaggedTensor):
            end = tf.fill(tf.stack([ids.nrows(), 1]), tf.constant(self.sep_id, tf.int32))
            return tf.concat([ids, tf.RaggedTensor.from_tensor(end)], axis=1)
        return tf.concat([ids, [self.sep_id]], axis=0)

    def detokenize(self, ids):
        """The text the ids spell (a string tensor: `[B]` for `[B, n]` ids, `[]` for `[n]`)."""
        text = self.tokenizer.detokenize(ids)
        if isinstance(text, (str, bytes, list, tuple)):  # keras-hub's eager results are Python strings
            text = tf.convert_to_tensor(text, tf.string)
        return text

    def get_config(self):
        config = super().get_config()
        config.update({"sequence_length": self.sequence_length})
        return config

    def describe(self):
        """The settings an export records: class, sequence length, truncation, special ids."""
        config = {key: value for key, value in self.get_config().items() if key not in ("name", "trainable", "dtype")}
        return {
            "class": type(self).__name__,
            **config,
            "truncation": self.truncation,
            "special_token_ids": {"[PAD]": self.pad_id, "[CLS]": self.cls_id, "[SEP]": self.sep_id, "[MASK]": self.mask_id},
        }


class EncoderPreprocessor(Preprocessor):
    """Texts to `[CLS] tokens [SEP] [PAD]...` for an encoder (classification, embedding).

    A text keeps its first `sequence_length - 2` tokens (the end of a long text is lost).

    Args:
        tokenizer, sequence_length: see `Preprocessor`.
        embedding_sequence_length: the length the `embed` signature packs to (None: the
            `sequence_length`). A sentence-transformers checkpoint was trained to embed up to
            its `max_seq_length` tokens, which can differ from what a fine-tuning run used.
    """

    minimum_length = 3
    truncation = "keep the first sequence_length - 2 tokens, then [CLS] ... [SEP]"

    def __init__(self, tokenizer, sequence_length, embedding_sequence_length=None, **kwargs):
        super().__init__(tokenizer, sequence_length, **kwargs)
        self.embedding_sequence_length = int(embedding_sequence_length) if embedding_sequence_length else None

    def pack(self, ids, sequence_length=None, pad_to_longest=False):
        """`[CLS] ids [SEP]` per row, cut to `sequence_length` (default: the layer's) tokens in all.

        Args:
            ids: ragged int32 `[B, (n)]` (or dense `[B, n]`) token ids.
            sequence_length: the length to cut to.
            pad_to_longest: pad to the longest packed row rather than to `sequence_length`
                (what serving does: the encoder's outputs at real tokens are the same).

        Returns:
            `(token_ids [B, L] int32, padding_mask [B, L] bool)`.
        """
        sequence_length = int(sequence_length or self.sequence_length)
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(ids)
        ids = tf.cast(ids, tf.int32)[:, : sequence_length - 2]
        rows = ids.nrows()
        cls = tf.RaggedTensor.from_tensor(tf.fill(tf.stack([rows, 1]), tf.constant(self.cls_id, tf.int32)))
        sep = tf.RaggedTensor.from_tensor(tf.fill(tf.stack([rows, 1]), tf.constant(self.sep_id, tf.int32)))
        packed = tf.concat([cls, ids, sep], axis=1)
        if pad_to_longest:
            token_ids = packed.to_tensor(self.pad_id)
        else:
            token_ids = packed.to_tensor(self.pad_id, shape=[None, sequence_length])
        padding_mask = tf.sequence_mask(packed.row_lengths(), tf.shape(token_ids)[1])
        return token_ids, padding_mask

    def call(self, text, pad_to_longest=False):
        """Strings `[B]` to `{"token_ids": [B, T] int32, "padding_mask": [B, T] bool}`."""
        token_ids, padding_mask = self.pack(self.tokenize(text), pad_to_longest=pad_to_longest)
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    def embedding_inputs(self, text):
        """What the `embed` signature encodes: packed to `embedding_sequence_length`, padded to the longest row."""
        return self.pack(self.tokenize(text), sequence_length=self.embedding_sequence_length, pad_to_longest=True)

    def get_config(self):
        config = super().get_config()
        config.update({"embedding_sequence_length": self.embedding_sequence_length})
        return config


class MaskedLMPreprocessor(EncoderPreprocessor):
    """`EncoderPreprocessor`'s packing plus BERT's dynamic masking, for masked-LM training.

    In each sequence ceil(`mask_selection_rate` x n) of its n selectable tokens are chosen
    (`[PAD]`, `[CLS]`, `[SEP]` and `[MASK]` never are); of those, `mask_token_rate` become
    `[MASK]`, `random_token_rate` a random token, and the rest stay. Masks are drawn afresh at
    every call (RoBERTa's dynamic masking; not seeded), by keras-hub's `MaskedLMMaskGenerator`.

    Args:
        tokenizer, sequence_length: see `Preprocessor`.
        mask_selection_rate, mask_token_rate, random_token_rate: the rates above.
        max_predictions: P, prediction slots per sequence; default ceil(mask_selection_rate x
            (T - 2)), the most the selector can choose, so no selection is cut.
    """

    def __init__(
        self, tokenizer, sequence_length, mask_selection_rate=0.15, mask_token_rate=0.8, random_token_rate=0.1,
        max_predictions=None, embedding_sequence_length=None, **kwargs,
    ):
        super().__init__(tokenizer, sequence_length, embedding_sequence_length=embedding_sequence_length, **kwargs)
        import keras_hub

        for name, rate in [
            ("mask_selection_rate", mask_selection_rate),
            ("mask_token_rate", mask_token_rate),
            ("random_token_rate", random_token_rate),
        ]:
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate}.")
        if mask_token_rate + random_token_rate > 1.0:
            raise ValueError(
                f"mask_token_rate + random_token_rate must be <= 1, got {mask_token_rate} + {random_token_rate}."
            )
        self.mask_selection_rate = float(mask_selection_rate)
        self.mask_token_rate = float(mask_token_rate)
        self.random_token_rate = float(random_token_rate)
        self.max_predictions = int(max_predictions or max(1, math.ceil(mask_selection_rate * (self.sequence_length - 2))))
        self.masker = keras_hub.layers.MaskedLMMaskGenerator(
            vocabulary_size=self.vocabulary_size,
            mask_selection_rate=self.mask_selection_rate,
            mask_token_id=self.mask_id,
            mask_selection_length=self.max_predictions,
            unselectable_token_ids=[self.pad_id, self.cls_id, self.sep_id, self.mask_id],
            mask_token_rate=self.mask_token_rate,
            random_token_rate=self.random_token_rate,
        )

    def mask(self, token_ids, padding_mask):
        """Masks packed sequences: returns `(x, y, sample_weight)`.

        x = {"token_ids" (masked), "padding_mask", "mask_positions" [B, P]}, y = the original
        ids at the masked positions [B, P], sample_weight = [B, P] float32, 1 for real
        predictions and 0 for unused slots (whose position and id are 0).
        """
        masked = self.masker(token_ids)
        x = {
            "token_ids": tf.cast(masked["token_ids"], tf.int32),
            "padding_mask": padding_mask,
            "mask_positions": tf.cast(masked["mask_positions"], tf.int32),
        }
        return x, tf.cast(masked["mask_ids"], tf.int32), tf.cast(masked["mask_weights"], tf.float32)

    def call(self, text, pad_to_longest=False):
        """Strings `[B]`, each packed alone and masked: `(x, y, sample_weight)` as in `mask`."""
        return self.mask(*self.pack(self.tokenize(text), pad_to_longest=pad_to_longest))

    def tokenize_with_masks(self, text):
        """Like `tokenize`, with each literal "[MASK]" in the text becoming the `[MASK]` id.

        The tokenizer never recognises special tokens in raw text, so the text is split at
        "[MASK]", the pieces are tokenized, and the mask id is put back between them.
        """
        pieces = tf.strings.split(text, sep="[MASK]")  # [B, (P)], P >= 1
        piece_ids = self.tokenize(pieces.flat_values)  # [N, (T)]
        row = pieces.value_rowids()
        index_in_row = tf.range(tf.shape(row, out_type=tf.int64)[0]) - tf.gather(pieces.row_starts(), row)
        followed_by_mask = index_in_row < tf.gather(pieces.row_lengths() - 1, row)
        masks = tf.RaggedTensor.from_row_lengths(
            tf.fill([tf.reduce_sum(tf.cast(followed_by_mask, tf.int32))], tf.constant(self.mask_id, tf.int32)),
            tf.cast(followed_by_mask, piece_ids.row_splits.dtype),
        )
        with_masks = tf.concat([piece_ids, masks], axis=1)
        pieces_per_text = tf.cast(pieces.row_lengths(), with_masks.row_splits.dtype)
        return tf.RaggedTensor.from_row_lengths(with_masks, pieces_per_text).merge_dims(1, 2)

    def get_config(self):
        config = super().get_config()
        config.update({
            "mask_selection_rate": self.mask_selection_rate,
            "mask_token_rate": self.mask_token_rate,
            "random_token_rate": self.random_token_rate,
            "max_predictions": self.max_predictions,
        })
        return config


class CausalLMPreprocessor(Preprocessor):
    """Documents and prompts to ids for a causal LM.

    A document is its tokens followed by `[SEP]` (`document_ids`); training concatenates
    documents into one stream cut into blocks of T + 1 tokens, so no document is truncated
    there. A prompt is `[SEP]` followed by its tokens (`prompt_ids`): a document starts after an
    end token in the stream. Generation keeps a prompt's last `sequence_length -
    max_new_tokens` tokens (`zoo.models.CausalLM.generate`, the export's `generate`).
    `call` prepares one unpacked example per text, for fine-tuning on separate texts.
    """

    truncation = (
        "training: none (documents are packed into a stream cut into blocks); "
        "prompts: keep the last sequence_length - max_new_tokens tokens"
    )

    def prompt_ids(self, prompt):
        """`[SEP]` then the prompt's tokens: ragged `[B, (n + 1)]` for strings `[B]`."""
        ids = self.tokenize(prompt)
        start = tf.fill(tf.stack([ids.nrows(), 1]), tf.constant(self.sep_id, tf.int32))
        return tf.concat([tf.RaggedTensor.from_tensor(start), ids], axis=1)

    def call(self, text):
        """Strings `[B]` to one next-token example each: `(x, y, sample_weight)`.

        The sequence `[SEP] tokens [SEP]` keeps its first T + 1 tokens; x = {"token_ids",
        "padding_mask"} `[B, T]`, y = the next token at each position `[B, T]`, sample_weight
        1.0 where y is a real token, right-padded with `[PAD]`.
        """
        ids = self.prompt_ids(text)
        end = tf.fill(tf.stack([ids.nrows(), 1]), tf.constant(self.sep_id, tf.int32))
        sequence = tf.concat([ids, tf.RaggedTensor.from_tensor(end)], axis=1)[:, : self.sequence_length + 1]
        lengths = sequence.row_lengths() - 1
        dense = sequence.to_tensor(self.pad_id, shape=[None, self.sequence_length + 1])
        mask = tf.sequence_mask(lengths, self.sequence_length)
        x = {"token_ids": tf.where(mask, dense[:, :-1], self.pad_id), "padding_mask": mask}
        return x, dense[:, 1:], tf.cast(mask, tf.float32)


PREPROCESSORS = {cls.__name__: cls for cls in (EncoderPreprocessor, MaskedLMPreprocessor, CausalLMPreprocessor)}


def save_preprocessor(preprocessor, directory):
    """Writes `preprocessor.json` (class and config) and the tokenizer into `directory`."""
    from zoo.data.tokenizer import save_tokenizer

    os.makedirs(directory, exist_ok=True)
    save_tokenizer(preprocessor.tokenizer, os.path.join(directory, "tokenizer"))
    config = {key: value for key, value in preprocessor.get_config().items() if key not in ("trainable", "dtype")}
    with open(os.path.join(directory, PREPROCESSOR_FILE), "w", encoding="utf-8") as file:
        json.dump({"format": FORMAT, "class": type(preprocessor).__name__, "config": config,
                   "truncation": preprocessor.truncation}, file, indent=2)
        file.write("\n")


def load_preprocessor(directory, tokenizer=None):
    """The preprocessor saved in a checkpoint directory (`preprocessor.json` and `tokenizer/`).

    A run directory works too (its `checkpoints/best` or `checkpoints/last`). `tokenizer`
    replaces the saved one (e.g. one already loaded).
    """
    from zoo.data.tokenizer import load_tokenizer

    for candidate in (directory, os.path.join(directory, "checkpoints", "best"), os.path.join(directory, "checkpoints", "last")):
        path = os.path.join(candidate, PREPROCESSOR_FILE)
        if os.path.isfile(path):
            break
    else:
        raise FileNotFoundError(f"No {PREPROCESSOR_FILE} in {directory!r} (nor in its checkpoints/best or checkpoints/last).")
    with open(path, encoding="utf-8") as file:
        try:
            saved = json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error.msg}, line {error.lineno}).") from None
    if not isinstance(saved, dict) or saved.get("class") not in PREPROCESSORS or not isinstance(saved.get("config"), dict):
        raise ValueError(f"{path}: not a zoo preprocessor (expected a class among {', '.join(sorted(PREPROCESSORS))}).")
    if tokenizer is None:
        tokenizer = load_tokenizer(os.path.join(os.path.dirname(path), "tokenizer"))
    return PREPROCESSORS[saved["class"]](tokenizer, **saved["config"])
