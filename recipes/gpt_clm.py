"""`gpt-clm`: a GPT-style causal language model, trained on packed blocks of text, with generation."""

import dataclasses
import math

import keras

from recipes.base import Recipe, RecipeConfig
from recipes.registry import register
from zoo.models import CausalLM, Decoder, Perplexity, SparseAccuracy, SparseCrossEntropy
from zoo.models.lora import enable_lora_for_fine_tuning


@dataclasses.dataclass(frozen=True)
class GPTConfig(RecipeConfig):
    dropout: float = 0.0  # as nanoGPT for pre-training; raise it for small data
    tokenizer: str = "bpe"  # lossless byte-level BPE: generated code keeps its layout
    learning_rate: float = 1e-3
    activation: str = "gelu_approximate"  # GPT-2's tanh GELU
    position_embedding_type: str = "learned"  # learned | sinusoidal | none (with use_rotary)
    use_rotary: bool = False
    num_key_value_heads: int = 0  # 0: one key/value head per query head
    sample_prompt: str = "def "  # what TensorBoard samples continue
    sample_tokens: int = 48
    steps_per_epoch: int = 800  # ~3.3M tokens: the default run takes about 4 minutes on 2 CPU cores (no XLA)
    validation_steps: int = 20
    # Start from a gpt-clm checkpoint (a run or checkpoint directory, or a .keras file), or a
    # GPT-2 directory that `zoo export --format hf` wrote ("hf:<directory>"): its decoder's
    # weights and its tokenizer; the shape fields must be the checkpoint's.
    init_from: str = ""
    # LoRA fine-tuning of init_from's decoder (zoo.models.lora): adapters of this rank on every
    # block's attention and feed-forward projections; only they train. 0: off.
    lora_rank: int = 0


PRESETS = {
    # The shared CPU benchmark shape (bench/README.md): 2 layers, hidden 128, 2 heads, context 128.
    "tiny": GPTConfig(),
    # The GPT-2 124M shape: 12 layers, hidden 768, 12 heads, context 1024, GPT-2's vocabulary size.
    "small": GPTConfig(
        preset="small", vocabulary_size=50257, sequence_length=1024, num_layers=12, hidden_dim=768,
        num_heads=12, intermediate_dim=3072, learning_rate=6e-4, batch_size=8, warmup_steps=2000,
        total_steps=600000,
    ),
}


@register("gpt-clm")
class GPTCausalLMRecipe(Recipe):
    """Next-token prediction on documents concatenated (each ended by [SEP]) and packed into
    full blocks of `sequence_length` tokens: no padding anywhere. Metrics: token accuracy and
    perplexity. `generate_text` continues prompts with the KV-cache generator."""

    config_class = GPTConfig
    presets = PRESETS

    def __init__(self, config):
        super().__init__(config)
        self._init_decoder = None
        if config.init_from:
            self._load_init_from(config.init_from)

    def _load_init_from(self, source):
        """The decoder and tokenizer of a gpt-clm checkpoint, or of a GPT-2 directory "hf:<dir>"
        (`zoo.converters.hf_export.import_gpt2`); its shape must be the config's."""
        from recipes.base import load_checkpoint
        from recipes.pretrained import is_hugging_face

        if is_hugging_face(source):
            from zoo.converters.hf_export import import_gpt2

            decoder, tokenizer, _ = import_gpt2(source)
        else:
            model, tokenizer, _ = load_checkpoint(source)
            decoder = getattr(model, "decoder", None)
        if not isinstance(decoder, Decoder) or tokenizer is None:
            raise ValueError(f"init_from={source!r} is not a gpt-clm checkpoint (a zoo Decoder with a tokenizer/ beside it).")
        fields = ("num_layers", "hidden_dim", "num_heads", "intermediate_dim", "sequence_length")
        mismatched = [f"{f}: checkpoint {getattr(decoder, f)}, config {getattr(self.config, f)}"
                      for f in fields if getattr(decoder, f) != getattr(self.config, f)]
        if mismatched:
            raise ValueError(f"init_from={source!r} does not match this gpt-clm's shape ({'; '.join(mismatched)}).")
        self._init_decoder, self.tokenizer = decoder, tokenizer

    def create_model(self):
        c = self.config
        if self._init_decoder is not None:  # in the current dtype policy, the weights copied below
            config = {key: value for key, value in self._init_decoder.get_config().items() if key != "dtype"}
            decoder = Decoder.from_config({**config, "name": "decoder"})
        else:
            decoder = Decoder(
                self.model_vocabulary_size, c.sequence_length, c.num_layers, c.hidden_dim, c.num_heads,
                c.intermediate_dim, dropout=c.dropout, activation=c.activation,
                position_embedding_type=c.position_embedding_type, use_rotary=c.use_rotary,
                num_key_value_heads=c.num_key_value_heads or None, name="decoder",
                kernel_initializer=self.kernel_initializer(), residual_kernel_initializer=self.residual_kernel_initializer(),
            )
        model = CausalLM(decoder, name="gpt_clm")
        if self._init_decoder is not None:
            decoder.set_weights(self._init_decoder.get_weights())
        lora = enable_lora_for_fine_tuning(model, c.lora_rank, c.init_from)
        if lora:
            print(lora)
        return model

    def kernel_initializer(self):
        """GPT-2's initialisation: normal(0, initializer_range) for projections and embeddings."""
        return keras.initializers.RandomNormal(stddev=self.config.initializer_range, seed=self.config.seed)

    def residual_kernel_initializer(self):
        """GPT-2's scaled initialisation of the projections that add into the residual stream
        (attention output, feed-forward output): the residual sum then keeps its variance with
        depth, at stddev initializer_range / sqrt(2 x num_layers) (two such sums per block)."""
        c = self.config
        return keras.initializers.RandomNormal(stddev=c.initializer_range / math.sqrt(2 * c.num_layers), seed=c.seed)

    def compile_model(self, model, total_steps=None, jit_compile="auto"):
        # SparseAccuracy: Keras' accuracy numbers without its argmax over every position's logits
        # (8% of a tiny step). Perplexity reuses the loss's per-token cross-entropy (CausalLM).
        # SparseCrossEntropy: Keras' loss values, a third of its time on a TensorFlow CPU.
        model.compile(
            optimizer=self.make_optimizer(total_steps),
            loss=SparseCrossEntropy(),
            metrics=[SparseAccuracy(name="accuracy"), Perplexity()],
            jit_compile=jit_compile,
        )

    def make_preprocessor(self, tokenizer):
        from zoo.data.preprocessing import CausalLMPreprocessor

        return CausalLMPreprocessor(tokenizer, self.config.sequence_length)

    def datasets(self, source=None, batch_size=None, splits=("train", "validation"), repeat=False):
        from zoo.data import corpora, pipelines

        source = source or self.config.data
        self.get_tokenizer(source)
        return tuple(
            pipelines.causal_lm_dataset(
                self._limit(corpora.text_documents(source, split)), self.preprocessor,
                batch_size or self.config.batch_size, shuffle=split == "train", seed=self.config.seed, repeat=repeat,
            )
            for split in splits
        )

    def tokens_per_byte(self, source=None, split="validation"):
        """Tokens per UTF-8 byte of a split as `datasets()` streams it: what turns this model's
        per-token loss into bits per byte, a figure that compares across tokenizers
        (`zoo.evaluation.bits_per_byte`; `zoo evaluate` and the trainer's `val_bits_per_byte`).

        Tokens: every token of every document of the split (`max_documents` applied, as in
        `datasets()`) plus its one end token `[SEP]`, made by the preprocessor's `document_ids`
        (the pipeline's own call); bytes: the sum of those documents' UTF-8 lengths. See
        `zoo.data.pipelines.count_tokens_and_bytes`: the pipeline drops its last partial block,
        the count does not, so this is the split's average. (`bert-mlm` has no such method: a
        masked LM predicts 15% of the tokens from both sides, so its loss is no code length of
        the text and bits per byte are not defined the same way.)
        """
        from zoo.data import corpora, pipelines

        source = source or self.config.data
        self.get_tokenizer(source)
        documents = self._limit(corpora.text_documents(source, split))
        tokens, num_bytes = pipelines.count_tokens_and_bytes(documents, self.preprocessor.document_ids)
        return tokens / num_bytes

    def tokens_per_byte_of(self, source=None, split="validation"):
        """The Task interface's bits-per-byte ratio: `tokens_per_byte`."""
        return self.tokens_per_byte(source, split)

    def generate_text(self, model, prompts, max_new_tokens=None, **sampling):
        """Continues each text prompt; returns the new text of each.

        Prompts start after an end-of-document token, as documents do in training; generation
        stops at the next one. `sampling`: temperature, top_k, top_p, seed (see CausalLM.generate).
        """
        preprocessor = self.preprocessor
        end_id = preprocessor.sep_id
        prompt_ids = preprocessor.prompt_ids(list(prompts)).to_list() if prompts else []
        new_ids = model.generate(
            prompt_ids, max_new_tokens=max_new_tokens or self.default_new_tokens, end_token_id=end_id, **sampling
        )
        return [self.detokenize([i for i in ids if i != end_id]) for ids in new_ids]

    @property
    def default_new_tokens(self):
        """`sample_tokens`, capped at half the context so that the prompt keeps room."""
        return max(1, min(self.config.sample_tokens, self.config.sequence_length // 2))

    def tensorboard_samples(self, model):
        """Three sampled continuations of `sample_prompt`, for TensorBoard's text dashboard."""
        prompts = [self.config.sample_prompt] * 3
        continuations = self.generate_text(model, prompts, temperature=0.8, top_k=40, seed=self.config.seed)
        return [prompt + continuation for prompt, continuation in zip(prompts, continuations)]

    def training_sample(self, model):
        """What `zoo train` prints at the end: a continuation of `sample_prompt` (temperature 0.8, top-k 40)."""
        prompt = self.config.sample_prompt
        text = self.generate_text(model, [prompt], temperature=0.8, top_k=40, seed=self.config.seed)[0]
        return f"Sample ({prompt!r}, temperature 0.8, top-k 40):\n{prompt}{text}"

    def detokenize(self, ids):
        if not ids:
            return ""
        text = self.preprocessor.detokenize(keras.ops.convert_to_tensor(ids, "int32"))
        if not isinstance(text, (str, bytes)):  # a tensor, depending on keras-hub's output mode
            text = keras.ops.convert_to_numpy(text).item()
        return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text

    # -- the task: evaluation and export --------------------------------------------------

    kind = "language_model"
    export_options = {"jit_compile": "compile the generation loop with XLA inside the SavedModel (default off)"}

    def evaluator(self, model):
        """Loss, perplexity, token accuracy and bits per byte per corpus (`zoo.evaluation`)."""
        from zoo.evaluation import LanguageModelEvaluator

        self.preprocessor  # noqa: B018 - raises without a tokenizer: never evaluate with a new one
        self.compile_model(model)  # this recipe's loss and metrics, whatever the model was compiled with
        return LanguageModelEvaluator(
            model, lambda source, split: self.datasets(source, splits=(split,))[0], tokens_per_byte=self.tokens_per_byte
        )

    def export_module(self, model, jit_compile=False):
        """`generate` (the serving default), `generate_ids`, `tokenize` and `detokenize` (see `zoo.export`)."""
        from zoo.export import ExportModule, GenerateEndpoints

        endpoints = GenerateEndpoints(model.decoder, jit_compile=jit_compile, max_new_tokens=self.config.sample_tokens)
        return ExportModule(self.preprocessor, [endpoints], serving_default="generate")

    def export_hf(self, model, directory, metrics=None):
        """`GPT2LMHeadModel` with the BPE tokenizer (`zoo.converters.hf_export.export_gpt2`)."""
        from zoo.converters.hf_export import export_gpt2

        name, config = self.export_metadata()
        return export_gpt2(model.decoder, self.preprocessor.tokenizer, directory, max_new_tokens=self.config.sample_tokens,
                           recipe=name, config=config, metrics=metrics)

    def onnx_model(self, model):
        """token_ids -> logits `[batch, length, vocabulary]` (`zoo.converters.onnx_export`)."""
        from zoo.converters.onnx_export import causal_lm_model

        return causal_lm_model(model.decoder)
