"""`classifier`: text classification with an encoder, from scratch or from a trained `bert-mlm`."""

import dataclasses

import keras

from recipes.base import Recipe, RecipeConfig, check_field, is_finite_number, is_integer
from recipes import pretrained
from recipes.pretrained import load_pretrained
from recipes.registry import register
from zoo.models import Encoder, TextClassifier, classification_metrics
from zoo.models.lora import enable_lora_for_fine_tuning


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(RecipeConfig):
    data: str = "wordnet"
    categories: str = "noun.animal,noun.plant,noun.food,noun.artifact"  # for wordnet
    examples_per_class: int = 2000  # cap per class (wordnet), chosen deterministically
    num_classes: int = 0  # 0: taken from the data
    sequence_length: int = 64  # WordNet glosses are short; longer texts are truncated
    lowercase: bool = True  # prose: uncased WordPiece
    activation: str = "gelu"
    num_segments: int = 2
    layer_norm_epsilon: float = 1e-12
    pooling: str = "mean"  # mean (learns much faster from scratch, as measured on a toy task) | cls (BERT)
    classifier_dropout: float = 0.1
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    total_steps: int = 1000
    # Start the encoder from a checkpoint: a bert-mlm run/checkpoint directory or .keras file, or
    # a Hugging Face BERT: "minilm" (the all-MiniLM-L6-v2 package) or "hf:<directory>".
    init_from: str = ""
    # LoRA fine-tuning of init_from's encoder (zoo.models.lora): adapters of this rank on every
    # block's attention and feed-forward projections; only they and the head train. 0: off.
    lora_rank: int = 0
    # Few-shot: train on only K labelled examples per class (a deterministic, nested sample:
    # the 8 of K=8 are among the 32 of K=32); 0 uses every training example. Validation and
    # test splits stay whole; a from-scratch tokenizer still learns from all the training text.
    shots_per_class: int = 0
    # Remedies for shifted data (training only: evaluation and export are unchanged).
    # augment: corrupt each training text on the fly, in the spec language of `zoo evaluate
    # --shifts` (char_noise=RATE, word_dropout=RATE, case=MODE; e.g. char_noise=0.1,word_dropout=0.2),
    # each example with probability augment_probability, drawn afresh every pass and seeded by
    # (seed, pass, example): a run and its resumption see the same texts.
    augment: str = ""
    augment_probability: float = 1.0
    # adversarial: none | fgm | pgd: loss = clean + adversarial_weight x the loss with the embedding
    # sum pushed by adversarial_epsilon (L2 per example) up the loss gradient (pgd: adversarial_steps
    # projected steps). TensorFlow backend; about 2x (fgm) a plain step's time. Epsilon is absolute:
    # keep it well below the embedding sums' own norm (tiny from scratch: about 1.5 per gloss, 0.34
    # per token); at 1.0 the tiny model learnt nothing.
    adversarial: str = "none"
    adversarial_epsilon: float = 0.3
    adversarial_steps: int = 3
    adversarial_weight: float = 1.0
    # consistency: none | rdrop (two dropout passes, symmetric KL) | augment (KL from the clean to
    # an augmented copy of each text; needs augment), weighted by consistency_weight.
    consistency: str = "none"
    consistency_weight: float = 1.0

    def validate(self):
        super().validate()
        from zoo.data.shifts import Augmentation
        from zoo.models.text_classifier import ADVERSARIAL_METHODS, CONSISTENCY_METHODS

        def check(name, ok, requirement):
            check_field(self, name, ok, requirement)

        number = is_finite_number

        check("adversarial", lambda v: v in ADVERSARIAL_METHODS, f"one of {', '.join(ADVERSARIAL_METHODS)}")
        check("consistency", lambda v: v in CONSISTENCY_METHODS, f"one of {', '.join(CONSISTENCY_METHODS)}")
        check("adversarial_epsilon", lambda v: number(v) and v > 0, "a finite number > 0")
        check("adversarial_steps", lambda v: is_integer(v) and v >= 1, "an integer >= 1")
        for name in ("adversarial_weight", "consistency_weight"):
            check(name, lambda v: number(v) and v >= 0, "a finite number >= 0")
        check("augment_probability", lambda v: number(v) and 0 <= v <= 1, "a number in [0, 1]")
        try:
            Augmentation.parse(self.augment, self.augment_probability)
        except ValueError as error:
            raise ValueError(f"augment={self.augment!r}: {error}") from None
        if self.consistency == "augment" and not self.augment.strip():
            raise ValueError("consistency=augment compares each text with an augmented copy: set augment too "
                             "(e.g. --set augment=char_noise=0.1).")


def _classifier(preset, layers, hidden, heads, **kwargs):
    return ClassifierConfig(
        preset=preset, num_layers=layers, hidden_dim=hidden, num_heads=heads, intermediate_dim=4 * hidden, **kwargs
    )


PRESETS = {
    "tiny": _classifier("tiny", 2, 128, 2),
    "mini": _classifier("mini", 4, 256, 4),
    "small": _classifier("small", 4, 512, 8),
    "base": _classifier("base", 12, 768, 12, vocabulary_size=30522, sequence_length=128, learning_rate=5e-5),
}


@register("classifier")
class ClassifierRecipe(Recipe):
    """An encoder and a classification head; `num_classes` and label names come from the data.
    Metrics: accuracy and macro precision, recall and F1. With `init_from`, the encoder's
    architecture, weights and tokenizer come from a trained `bert-mlm`; the head starts fresh."""

    config_class = ClassifierConfig
    presets = PRESETS

    def __init__(self, config):
        if (config.adversarial, config.consistency) != ("none", "none") and self.name != "classifier":
            raise ValueError(
                f"{self.name}: adversarial and consistency train the classifier recipe's model only; "
                f"set them to none here (augment works with every classifier-like recipe)."
            )
        super().__init__(config)
        self.label_names = None
        self._pretrained_encoder = None
        self._pretrained = None
        if config.init_from:
            self._load_pretrained(config.init_from)

    def _load_pretrained(self, path):
        """The encoder and tokenizer of `init_from` (see recipes/pretrained.py): a Hugging Face
        BERT's shape comes from the checkpoint; a zoo checkpoint's must match the config's."""
        loaded = load_pretrained(path, self.config, self.name)
        self._pretrained_encoder = loaded.encoder
        self._pretrained = loaded
        self.tokenizer = loaded.tokenizer

    def make_preprocessor(self, tokenizer):
        from zoo.data.preprocessing import EncoderPreprocessor

        return EncoderPreprocessor(
            tokenizer, self.config.sequence_length,
            embedding_sequence_length=pretrained.embedding_sequence_length(self._pretrained),
        )

    def tokenizer_training_texts(self, source):
        from zoo.data import corpora

        return corpora.labelled_examples(source, "train", **self._data_options(source)).texts

    def _data_options(self, source):
        c = self.config
        if source == "wordnet":
            return {"categories": c.categories.split(","), "examples_per_class": c.examples_per_class}
        return {}

    @property
    def num_classes(self):
        if self.label_names is not None:
            return len(self.label_names)
        if self.config.num_classes:
            return self.config.num_classes
        raise ValueError("The number of classes comes from the data: call datasets() first, or set num_classes.")

    def create_model(self):
        c = self.config
        if self._pretrained_encoder is not None:  # init_from: the pretrained encoder, copied below
            encoder = pretrained.fresh_encoder(self._pretrained_encoder)  # in the current dtype policy
        else:
            encoder = Encoder(
                self.model_vocabulary_size, c.sequence_length, c.num_layers, c.hidden_dim, c.num_heads,
                c.intermediate_dim, dropout=c.dropout, activation=c.activation, num_segments=c.num_segments,
                layer_norm_epsilon=c.layer_norm_epsilon, kernel_initializer=self.kernel_initializer(), name="encoder",
            )
        model = self.task_model(encoder)
        if self._pretrained_encoder is not None:
            encoder.set_weights(self._pretrained_encoder.get_weights())
        lora = enable_lora_for_fine_tuning(model, c.lora_rank, c.init_from)
        if lora:
            print(lora)
        return model

    def task_model(self, encoder):
        """The model around the encoder (subclasses put other heads on it)."""
        c = self.config
        return TextClassifier(encoder, self.num_classes, pooling=c.pooling, dropout=c.classifier_dropout, name="classifier")

    def compile_model(self, model, total_steps=None, jit_compile="auto"):
        num_classes = model.num_classes
        model.compile(
            optimizer=self.make_optimizer(total_steps),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=classification_metrics(num_classes),
            jit_compile=jit_compile,
        )
        c = self.config
        if (c.adversarial, c.consistency) != ("none", "none") and isinstance(model, TextClassifier):
            model.configure_training(
                adversarial=c.adversarial, adversarial_epsilon=c.adversarial_epsilon, adversarial_steps=c.adversarial_steps,
                adversarial_weight=c.adversarial_weight, consistency=c.consistency, consistency_weight=c.consistency_weight,
            )

    def examples(self, source=None, split="train"):
        """The labelled examples of a split (texts, labels, label_names)."""
        from zoo.data import corpora

        source = source or self.config.data
        examples = corpora.labelled_examples(source, split, **self._data_options(source))
        if self.label_names is None:
            self.label_names = list(examples.label_names)
        elif list(examples.label_names) != self.label_names:
            raise ValueError(f"Labels of {source!r} ({examples.label_names}) differ from the model's ({self.label_names}).")
        return examples

    def datasets(self, source=None, batch_size=None, splits=("train", "validation"), repeat=False):
        from zoo.data import pipelines

        source = source or self.config.data
        self.get_tokenizer(source)
        results = []
        for split in splits:
            examples = self.examples(source, split)
            if split == "train" and self.config.shots_per_class:
                from zoo.evaluation import few_shot_examples

                examples = few_shot_examples(examples, self.config.shots_per_class, self.config.seed)
            texts, labels = examples.texts, examples.labels
            if self.config.max_documents:
                texts, labels = texts[: self.config.max_documents], labels[: self.config.max_documents]
            augmentation = {}
            if split == "train":
                texts, labels, augmentation = self.training_set(source, texts, labels)
            results.append(
                pipelines.classification_dataset(
                    texts, labels, self.preprocessor, batch_size or self.config.batch_size,
                    shuffle=split == "train", seed=self.config.seed, repeat=repeat, **augmentation,
                )
            )
        return tuple(results)

    def training_set(self, source, texts, labels):
        """`(texts, labels, options)`: the training examples and the augmentation options of
        `pipelines.classification_dataset` (none without `augment`; with `consistency=augment`
        the augmented copy comes beside the clean text). Subclasses may add examples."""
        from zoo.data.shifts import Augmentation

        augmentation = Augmentation.parse(self.config.augment, self.config.augment_probability)
        if augmentation is None:
            return texts, labels, {}
        return texts, labels, {"augment": augmentation, "augmented_view": self.config.consistency == "augment"}

    # -- the task: evaluation and export --------------------------------------------------

    kind = "classification"

    def classification_model(self, model):
        """The `{"token_ids", "padding_mask"}` -> logits model inside `model` (subclasses whose
        training model wraps a classifier return that)."""
        return model

    def evaluator(self, model):
        from zoo.evaluation import ClassificationEvaluator

        return ClassificationEvaluator(
            self.classification_model(model), self.preprocessor, examples=self.examples,
            label_names=self.label_names, batch_size=self.config.batch_size,
        )

    def export_module(self, model):
        """`classify` (the serving default), `classify_ids`, `embed` and `tokenize` (see `zoo.export`)."""
        from zoo.export import ClassifyEndpoints, EmbedEndpoint, ExportModule, TokenizeEndpoint

        classifier = self.classification_model(model)
        return ExportModule(
            self.preprocessor,
            [ClassifyEndpoints(classifier, self.label_names), EmbedEndpoint(classifier.encoder), TokenizeEndpoint("classify")],
            serving_default="classify",
        )

    def export_hf(self, model, directory, metrics=None):
        """`BertModel` plus sentence-transformers modules for the head, which BERT's
        `BertForSequenceClassification` cannot express (`zoo.converters.hf_export`)."""
        from zoo.converters.hf_export import export_bert

        classifier = self.classification_model(model)
        if not isinstance(classifier, TextClassifier):
            return super().export_hf(model, directory, metrics)
        name, config = self.export_metadata()
        return export_bert(classifier.encoder, self.preprocessor.tokenizer, directory, classification_head=classifier.head,
                           label_names=self.label_names, sequence_length=self.config.sequence_length,
                           recipe=name, config=config, metrics=metrics)

    def onnx_model(self, model):
        """token_ids, padding_mask -> logits and probabilities (`zoo.converters.onnx_export`)."""
        from zoo.converters.onnx_export import classifier_model

        return classifier_model(self.classification_model(model))

    def save(self, model, directory):
        super().save(model, directory)
        import json
        import os

        with open(os.path.join(directory, "labels.json"), "w") as f:
            json.dump(self.label_names, f)
