"""`init_from`: where the recipes that take it (classifier, bert-mlm) get a pretrained model.

A source is one of
- `"minilm"` or `"hf:<directory>"`: a Hugging Face BERT (`zoo.converters.hf_bert`). The model's
  shape (layers, width, vocabulary, positions) comes from the checkpoint; the config's shape
  fields are not used, and its `sequence_length` must fit in the checkpoint's positions. The
  tokenizer is BERT's, or, for a directory `zoo export --format hf` wrote from a model with the
  zoo's own WordPiece, that tokenizer again (`hf_bert.checkpoint_tokenizer`): the same ids.
- anything else: a zoo checkpoint (a run directory, a checkpoint directory or a `.keras`
  file, see `recipes.base.load_checkpoint`) holding a model with a zoo `Encoder` and a
  `tokenizer/` beside it. Its encoder must have the config's shape; the error names each
  field that differs.

    pretrained = load_pretrained(config.init_from, config, "classifier")
    pretrained.encoder, pretrained.head, pretrained.tokenizer

`head` is the checkpoint's masked-LM head (a `MaskedLMHead`) when asked for and present,
else None; `copy_masked_lm_head` copies it into a new model's head.
"""

import collections
import logging
import os

from recipes.base import load_checkpoint
from zoo.layers.masked_lm_head import MaskedLMHead
from zoo.models.encoder import Encoder

logger = logging.getLogger(__name__)

# Encoder fields a zoo checkpoint fixes: a model started from it must agree on each.
# (`sequence_length` is checked apart: the config's may be shorter than the checkpoint's.)
ARCHITECTURE_FIELDS = ("num_layers", "hidden_dim", "num_heads", "intermediate_dim")

Pretrained = collections.namedtuple("Pretrained", "encoder head tokenizer info")
Pretrained.__doc__ = """A loaded `init_from`: the Encoder, the masked-LM head (or None), the
tokenizer, and `info` (a Hugging Face checkpoint's `hf_bert` info, a zoo checkpoint's config.json)."""


def is_hugging_face(source):
    """Whether `init_from=source` names a Hugging Face checkpoint rather than a zoo one."""
    from zoo.converters.hf_bert import PACKAGED_CHECKPOINTS

    return source in PACKAGED_CHECKPOINTS or source.startswith("hf:")


def load_pretrained(source, config, recipe_name, masked_lm_head=False):
    """The `Pretrained` of `init_from=source` for a recipe with `config`.

    Args:
        source: the `init_from` value.
        config: the recipe's config (its shape fields and `sequence_length` are checked).
        recipe_name: names the recipe in error messages.
        masked_lm_head: also load the checkpoint's masked-LM head, where it has one.

    Raises:
        ValueError: a shape field differs from a zoo checkpoint's, `sequence_length` exceeds
            the checkpoint's positions, the model has no zoo Encoder, no tokenizer is saved
            beside it, or (`zoo.converters.hf_bert`) the Hugging Face checkpoint does not load.
        FileNotFoundError: no checkpoint at `source`.
    """
    if is_hugging_face(source):
        return _load_hugging_face(source, config.sequence_length, masked_lm_head)
    return _load_zoo_checkpoint(source, config, recipe_name, masked_lm_head)


def _load_hugging_face(source, sequence_length, masked_lm_head):
    from zoo.converters import hf_bert

    directory = hf_bert.resolve_checkpoint(source)
    if masked_lm_head:
        model, tokenizer, info, has_head = hf_bert.load_masked_lm(directory)
        encoder, head = model.encoder, model.head if has_head else None
    else:
        (encoder, tokenizer, info), head = hf_bert.load_encoder(directory), None
    check_sequence_length(sequence_length, encoder, source)
    return Pretrained(encoder, head, tokenizer, info)


def _load_zoo_checkpoint(source, config, recipe_name, masked_lm_head):
    try:
        model, tokenizer, checkpoint_config = load_checkpoint(source)
    except FileNotFoundError as error:
        if os.path.isfile(os.path.join(source, "model.safetensors")):
            raise FileNotFoundError(f"{error} It looks like a Hugging Face checkpoint: use init_from='hf:{source}'.") from error
        raise
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, Encoder):
        raise ValueError(f"init_from={source!r} holds a {type(model).__name__}, not a model with a zoo Encoder (e.g. bert-mlm).")
    if tokenizer is None:
        raise ValueError(f"init_from={source!r} has no tokenizer/ beside its model: the encoder's vocabulary is unknown.")
    encoder_config = encoder.get_config()
    mismatched = [
        f"{field}: checkpoint {encoder_config[field]}, config {getattr(config, field)}"
        for field in ARCHITECTURE_FIELDS
        if encoder_config[field] != getattr(config, field)
    ]
    if config.sequence_length > encoder.sequence_length:
        mismatched.append(
            f"sequence_length: checkpoint {encoder.sequence_length} positions, config {config.sequence_length}"
        )
    if mismatched:
        raise ValueError(
            f"init_from={source!r} does not match this {recipe_name}'s shape ({'; '.join(mismatched)}). "
            "Pick the preset the checkpoint was trained with, or set those fields to the checkpoint's values."
        )
    head = masked_lm_head_of(model) if masked_lm_head else None
    return Pretrained(encoder, head, tokenizer, checkpoint_config)


def masked_lm_preprocessor(config, tokenizer, loaded=None):
    """The `MaskedLMPreprocessor` of a masked-LM recipe (bert-mlm, multitask) from its config's
    sequence length and masking rates; `loaded` (its `init_from`, or None) sets `embed`'s length."""
    from zoo.data.preprocessing import MaskedLMPreprocessor

    return MaskedLMPreprocessor(
        tokenizer, config.sequence_length, mask_selection_rate=config.mask_selection_rate,
        mask_token_rate=config.mask_token_rate, random_token_rate=config.random_token_rate,
        max_predictions=config.max_predictions or None, embedding_sequence_length=embedding_sequence_length(loaded),
    )


def embedding_sequence_length(loaded):
    """How many tokens the `embed` signature keeps for a model started from `loaded` (a
    `Pretrained`, or None): a sentence-transformers checkpoint's `max_seq_length` (what
    sentence-transformers truncates to; 256 for all-MiniLM-L6-v2), capped at the encoder's
    positions; None (the recipe's `sequence_length`) for anything else."""
    if loaded is None or not isinstance(loaded.info, dict) or not loaded.info.get("max_seq_length"):
        return None
    return min(int(loaded.info["max_seq_length"]), int(loaded.encoder.sequence_length))


def check_sequence_length(sequence_length, encoder, source):
    """A clear error when the recipe's sequences are longer than the checkpoint has positions for."""
    if sequence_length > encoder.sequence_length:
        raise ValueError(
            f"sequence_length {sequence_length} exceeds the {encoder.sequence_length} positions "
            f"of init_from={source!r}."
        )


def masked_lm_head_of(model):
    """The model's `MaskedLMHead` (a bert-mlm's, a multitask model's), or None."""
    heads = [layer for layer in model.layers if isinstance(layer, MaskedLMHead)]
    return heads[0] if len(heads) == 1 else None


def fresh_encoder(encoder):
    """An unbuilt Encoder of `encoder`'s architecture, named "encoder", in the current dtype
    policy (a checkpoint loaded before mixed precision was switched on stays float32 otherwise)."""
    config = {key: value for key, value in encoder.get_config().items() if key != "dtype"}
    return Encoder.from_config({**config, "name": "encoder"})


def copy_masked_lm_head(source, target):
    """Copies a `MaskedLMHead`'s own weights (transform, its norm, the output bias, an untied
    projection), not the token embedding it is tied to (that belongs to the encoder)."""
    sources, targets = _own_weights(source), _own_weights(target)
    if [tuple(v.shape) for v in sources] != [tuple(v.shape) for v in targets]:
        raise ValueError(
            "The checkpoint's masked-LM head does not fit this model's: "
            f"{[(v.path, tuple(v.shape)) for v in sources]} vs {[(v.path, tuple(v.shape)) for v in targets]}."
        )
    for variable, value in zip(targets, sources):
        variable.assign(value)


def _own_weights(head):
    tied = {id(variable) for variable in head.token_embedding.weights} if head.token_embedding is not None else set()
    return [variable for variable in head.weights if id(variable) not in tied]


def warn_fresh_head(source):
    logger.warning(
        "init_from=%r has no masked-LM head (cls.predictions.* / a MaskedLMHead): the encoder is loaded, "
        "the MLM head starts from random weights.",
        source,
    )
