"""`bert-mlm`: a BERT-style masked language model with dynamic masking in the input pipeline."""

import dataclasses

import keras

from recipes import pretrained
from recipes.base import Recipe, RecipeConfig
from recipes.registry import register
from zoo.models import Encoder, MaskedLM, Perplexity, SparseCrossEntropy
from zoo.models.lora import enable_lora_for_fine_tuning


@dataclasses.dataclass(frozen=True)
class BertConfig(RecipeConfig):
    activation: str = "gelu"  # BERT's exact (erf) GELU
    num_segments: int = 2  # BERT's token types (all 0 for single texts)
    layer_norm_epsilon: float = 1e-12
    mask_selection_rate: float = 0.15
    mask_token_rate: float = 0.8  # of the selected: replaced by [MASK]
    random_token_rate: float = 0.1  # of the selected: replaced by a random token (the rest kept)
    max_predictions: int = 0  # masked positions per sequence; 0: the pipeline's default for the rate
    steps_per_epoch: int = 300
    validation_steps: int = 20
    # Start from a checkpoint: a bert-mlm run/checkpoint directory or .keras file (encoder, head
    # and tokenizer), or a Hugging Face BERT: "minilm" (the all-MiniLM-L6-v2 package) or
    # "hf:<directory>" (the encoder, and the head where the checkpoint has one: BertForMaskedLM).
    init_from: str = ""
    # LoRA fine-tuning of init_from's encoder (zoo.models.lora): adapters of this rank on every
    # block's attention and feed-forward projections; only they and the MLM head train. 0: off.
    lora_rank: int = 0


def _bert(preset, layers, hidden, heads, **kwargs):
    return BertConfig(
        preset=preset, num_layers=layers, hidden_dim=hidden, num_heads=heads, intermediate_dim=4 * hidden, **kwargs
    )


# The BERT miniatures (Turc et al., 2019) and BERT-base.
PRESETS = {
    "tiny": _bert("tiny", 2, 128, 2),
    "mini": _bert("mini", 4, 256, 4),
    "small": _bert("small", 4, 512, 8),
    "base": _bert("base", 12, 768, 12, vocabulary_size=30522, sequence_length=512, learning_rate=1e-4, warmup_steps=10000, total_steps=1000000),
}


@register("bert-mlm")
class BertMaskedLMRecipe(Recipe):
    """Masked-token prediction: text chunks wrapped as [CLS] ... [SEP], 15% of tokens selected
    per step (80% [MASK], 10% random, 10% kept), logits only at the selected positions.
    Metrics: masked-token accuracy and perplexity.

    With `init_from` (see recipes/pretrained.py) training continues from a checkpoint with its
    tokenizer: a zoo bert-mlm's whole model (its shape must match the config's), or a Hugging
    Face BERT's encoder (its shape comes from the checkpoint) and masked-LM head. A checkpoint
    without a masked-LM head (all-MiniLM-L6-v2, a BertModel, a classifier) gives the encoder
    only: the head starts fresh, and a warning says so."""

    config_class = BertConfig
    presets = PRESETS

    def __init__(self, config):
        super().__init__(config)
        self._pretrained = None
        if config.init_from:
            self._pretrained = pretrained.load_pretrained(config.init_from, config, self.name, masked_lm_head=True)
            self.tokenizer = self._pretrained.tokenizer
            if self._pretrained.head is None:
                pretrained.warn_fresh_head(config.init_from)

    def create_model(self):
        c = self.config
        if self._pretrained is not None:
            encoder = pretrained.fresh_encoder(self._pretrained.encoder)
        else:
            encoder = Encoder(
                self.model_vocabulary_size, c.sequence_length, c.num_layers, c.hidden_dim, c.num_heads,
                c.intermediate_dim, dropout=c.dropout, activation=c.activation, num_segments=c.num_segments,
                layer_norm_epsilon=c.layer_norm_epsilon, kernel_initializer=self.kernel_initializer(), name="encoder",
            )
        model = MaskedLM(encoder, name="bert_mlm")
        if self._pretrained is not None:
            encoder.set_weights(self._pretrained.encoder.get_weights())
            if self._pretrained.head is not None:
                pretrained.copy_masked_lm_head(self._pretrained.head, model.head)
        lora = enable_lora_for_fine_tuning(model, c.lora_rank, c.init_from)
        if lora:
            print(lora)
        return model

    def compile_model(self, model, total_steps=None, jit_compile="auto"):
        model.compile(
            optimizer=self.make_optimizer(total_steps),
            loss=SparseCrossEntropy(),
            weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"), Perplexity()],
            jit_compile=jit_compile,
        )

    def make_preprocessor(self, tokenizer):
        return pretrained.masked_lm_preprocessor(self.config, tokenizer, self._pretrained)

    def datasets(self, source=None, batch_size=None, splits=("train", "validation"), repeat=False):
        from zoo.data import corpora, pipelines

        c = self.config
        source = source or c.data
        self.get_tokenizer(source)
        return tuple(
            pipelines.masked_lm_dataset(
                self._limit(corpora.text_documents(source, split)), self.preprocessor, batch_size or c.batch_size,
                shuffle=split == "train", seed=c.seed, repeat=repeat,
            )
            for split in splits
        )

    # -- the task: evaluation and export --------------------------------------------------

    kind = "language_model"
    export_options = {"top_k": "fill_mask: candidates returned per mask (default 5)"}

    def evaluator(self, model):
        """Loss, perplexity and masked-token accuracy per corpus (`zoo.evaluation`); no bits per
        byte: a masked LM predicts 15% of the tokens, each seen with both sides."""
        from zoo.evaluation import LanguageModelEvaluator

        self.preprocessor  # noqa: B018 - raises without a tokenizer: never evaluate with a new one
        self.compile_model(model)  # this recipe's loss and metrics, whatever the model was compiled with
        return LanguageModelEvaluator(model, lambda source, split: self.datasets(source, splits=(split,))[0])

    def export_module(self, model, top_k=None):
        """`fill_mask` (the serving default), `fill_mask_ids`, `embed` and `tokenize` (see `zoo.export`)."""
        from zoo.export import DEFAULT_TOP_K, EmbedEndpoint, ExportModule, FillMaskEndpoints, TokenizeEndpoint

        endpoints = [
            FillMaskEndpoints(lambda inputs: model(inputs, training=False), [model], model.encoder.vocabulary_size,
                              DEFAULT_TOP_K if top_k is None else top_k),
            EmbedEndpoint(model.encoder),
            TokenizeEndpoint("fill_mask", with_masks=True),
        ]
        return ExportModule(self.preprocessor, endpoints, serving_default="fill_mask")

    def export_hf(self, model, directory, metrics=None):
        """`BertForMaskedLM` with the WordPiece tokenizer (`zoo.converters.hf_export.export_bert`)."""
        from zoo.converters.hf_export import export_bert

        name, config = self.export_metadata()
        return export_bert(model.encoder, self.preprocessor.tokenizer, directory, masked_lm_head=model.head,
                           sequence_length=self.config.sequence_length, recipe=name, config=config, metrics=metrics)

    def onnx_model(self, model):
        """token_ids, padding_mask, mask_positions -> logits at those positions (`zoo.converters.onnx_export`)."""
        from zoo.converters.onnx_export import masked_lm_model

        return masked_lm_model(model)
