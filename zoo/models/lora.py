"""LoRA fine-tuning (Hu et al., 2021) of the zoo's models with Keras' own adapters.

The attention and feed-forward projections of every block are `keras.layers.EinsumDense` /
`Dense` layers, so Keras' `layer.enable_lora(rank)` applies to them: it freezes the layer's
kernel and adds two trainable float32 factors `lora_kernel_a [..., rank]`, `lora_kernel_b
[rank, out]` (b starts at zero: the adapted model starts as the base model), the kernel in use
being `kernel + (alpha / rank) * a @ b`.

    model = TextClassifier(encoder, num_classes=4)    # encoder with pretrained weights
    enable_lora(model, rank=8)                        # adapters on; the rest of the backbone frozen
    print(f"{trainable_share(model):.2%} of the weights train")
    model.compile(...)                                # after enable_lora: the new trainable set
    model.fit(...)
    merged = merge_lora(model)                        # plain model, adapters folded in: export this

The recipes do this with the config key `lora_rank` (with `init_from`).

What trains: the adapters, and whatever of the model lies outside its backbone (the task head:
a TextClassifier's classification head, a MaskedLM's head with its output bias; a CausalLM's
output projection is the tied token embedding, inside the backbone, so only adapters train).
Every other backbone weight (embeddings, norms, the adapted layers' kernels and biases) is frozen.
"""

import os
import tempfile

import keras

TARGETS = ("attention", "feed_forward")


def _task_model(model):
    """The model whose backbone LoRA adapts: a DistillationModel's student, else the model."""
    return getattr(model, "student", None) or model


def backbone_of(model):
    """The `Encoder` or `Decoder` of a zoo model (the model itself if it is one)."""
    from zoo.models.decoder import Decoder
    from zoo.models.encoder import Encoder

    if isinstance(model, (Encoder, Decoder)):
        return model
    task = _task_model(model)
    for name in ("encoder", "decoder"):
        backbone = getattr(task, name, None)
        if isinstance(backbone, (Encoder, Decoder)):
            return backbone
    raise ValueError(f"{type(model).__name__} has no zoo Encoder or Decoder (an `encoder` or `decoder` attribute) to adapt.")


def lora_layers(model, targets=TARGETS):
    """The projection layers LoRA adapts in `model`'s backbone, block by block.

    `targets`: "attention" (the fused query/key/value or query and key/value projections, and
    the output projection, of self- and cross-attention) and/or "feed_forward" (its Dense layers).
    """
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    unknown = [target for target in targets if target not in TARGETS]
    if unknown or not targets:
        raise ValueError(f"Unknown LoRA target(s) {unknown or targets!r}; expected some of {', '.join(TARGETS)}.")
    layers = []
    for block in backbone_of(model).blocks:
        if "attention" in targets:
            for attention in (block.attention, getattr(block, "cross_attention_layer", None)):
                if attention is not None:
                    layers.extend(attention.projections().values())
        if "feed_forward" in targets:
            layers.extend(block.feed_forward.projections().values())
    return layers


def enable_lora(model, rank, targets=TARGETS, alpha=None):
    """Adds rank-`rank` LoRA adapters to `targets` (see `lora_layers`) in every block of
    `model`'s backbone and freezes every other backbone weight. In place; returns `model`.

    Args:
        model: a built zoo model (TextClassifier, MaskedLM, CausalLM, MultiTaskModel,
            DistillationModel: its student) or a backbone.
        rank: the adapters' rank (an integer >= 1).
        targets: "attention" and/or "feed_forward".
        alpha: the update's scale numerator (`alpha / rank`); defaults to `rank` (scale 1).

    Compile (or recompile) the model afterwards: the optimiser must see the new trainable set.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1, got {rank!r}.")
    layers = lora_layers(model, targets)
    if not all(layer.built for layer in layers):
        raise ValueError("Build the model (call it once, or load its weights) before enabling LoRA.")
    if any(layer.lora_enabled for layer in layers):
        raise ValueError("LoRA is already enabled on this model.")
    for layer in layers:
        layer.enable_lora(rank, lora_alpha=alpha)
    adapters = {id(v) for layer in layers for v in (layer.lora_kernel_a, layer.lora_kernel_b)}
    for variable in backbone_of(model).weights:
        variable.trainable = id(variable) in adapters
    return model


def trainable_share(model):
    """The fraction of the model's parameters that train (for a DistillationModel: of its student's)."""
    weights = _task_model(model).weights
    total = sum(int(keras.ops.size(w)) for w in weights)
    trainable = sum(int(keras.ops.size(w)) for w in weights if w.trainable)
    return trainable / total if total else 0.0


def describe_trainable(model):
    """One line: how many parameters train, of how many (for logs)."""
    weights = _task_model(model).weights
    total = sum(int(keras.ops.size(w)) for w in weights)
    trainable = sum(int(keras.ops.size(w)) for w in weights if w.trainable)
    return f"Trainable parameters: {trainable:,} of {total:,} ({trainable / max(total, 1):.2%})."


def merge_lora(model):
    """A copy of `model` without adapters, each adapted kernel replaced by `kernel + (alpha /
    rank) * a @ b`: a plain model of the original architecture, for export and serving.

    Keras' own path: the adapted layers write merged kernels when saved (`save_own_variables`),
    and the saved config has no adapters (the zoo's layers build their projections themselves),
    so saving to a temporary `.keras` file and loading it gives the merged model. Not compiled.
    """
    import zoo  # noqa: F401 - registers the zoo's classes for load_model

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "merged.keras")
        model.save(path)
        return keras.models.load_model(path, compile=False)


def enable_lora_for_fine_tuning(model, rank, source):
    """What a `lora_rank` setting does to a model whose weights came from `source` (the path
    or name of a pretrained model or checkpoint): `enable_lora(model, rank)` and a line saying
    how many parameters train (returned, for the caller to print); rank 0 does nothing (None).

    Raises:
        ValueError: rank > 0 without a `source`: adapters on random weights fine-tune nothing.
    """
    if not rank:
        return None
    if not source:
        raise ValueError(
            f"lora_rank={rank} fine-tunes pretrained weights: give init_from (a pretrained model or a zoo "
            "checkpoint), or set lora_rank=0."
        )
    enable_lora(model, rank)
    return f"LoRA rank {rank} on the weights of {source}: " + describe_trainable(model)
