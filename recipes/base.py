"""What every recipe shares: the common config fields, tokenizer handling, the optimiser, checkpoints.

A recipe is a config dataclass, named presets of it, `build_model()` (a compiled keras.Model),
`datasets()` (tf.data pipelines) and the `zoo.tasks.Task` interface (`kind`, `preprocessor`,
`export_module()`, `evaluator()`), through which export, serving, evaluation, sweeps and the
command line reach it. Recipe files subclass `Recipe` and fill those in; see the README's
"Add a recipe" section.
"""

import dataclasses
import json
import os

import keras

from zoo.optimization import make_optimizer
from zoo.tasks import Task


@dataclasses.dataclass(frozen=True)
class RecipeConfig:
    """Fields every recipe has. Recipes extend it with their own."""

    preset: str = "tiny"
    # Model shape.
    vocabulary_size: int = 8192
    sequence_length: int = 128
    num_layers: int = 2
    hidden_dim: int = 128
    num_heads: int = 2
    intermediate_dim: int = 512
    dropout: float = 0.1
    # Initialisation: the standard deviation of the random weights (BERT's and GPT-2's 0.02).
    # Encoder recipes draw from a truncated normal, decoder recipes from a normal with the
    # projections into the residual stream scaled by 1/sqrt(2 x num_layers) (GPT-2). Every
    # weight has its own seed, derived from `seed` and the weight's path.
    initializer_range: float = 0.02
    # Data.
    data: str = "stdlib"
    batch_size: int = 32
    lowercase: bool = False  # cased WordPiece: code is case-sensitive
    # "wordpiece" (BERT-style encoders) or "bpe" (lossless byte-level BPE: causal LMs, code).
    tokenizer: str = "wordpiece"
    max_documents: int = 0  # use only the first N documents of each split (0: all); for quick runs
    # Optimisation: AdamW, linear warmup then decay, global-norm clipping.
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    decay: str = "cosine"  # cosine | linear | constant
    total_steps: int = 2000  # length of the decay; the trainer sets it from epochs x steps
    # Training length (the trainer's defaults; its options override them).
    steps_per_epoch: int = 0  # 0: one full pass over the training split
    validation_steps: int = 0  # 0: the whole validation split
    clipnorm: float = 1.0
    gradient_accumulation_steps: int = 1
    seed: int = 0

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Raises ValueError naming the first field whose value cannot train (a negative or NaN
        learning rate, dropout of 1, zero layers...). Runs on every config, presets and overrides."""
        from zoo.optimization import DECAYS

        def check(name, ok, requirement):
            check_field(self, name, ok, requirement)

        number, integer = is_finite_number, is_integer

        for name in ("vocabulary_size", "sequence_length", "num_layers", "hidden_dim", "num_heads",
                     "intermediate_dim", "batch_size", "total_steps", "gradient_accumulation_steps"):
            check(name, lambda v: integer(v) and v >= 1, "an integer >= 1")
        for name in ("max_documents", "warmup_steps", "steps_per_epoch", "validation_steps"):
            check(name, lambda v: integer(v) and v >= 0, "an integer >= 0")
        check("learning_rate", lambda v: number(v) and v > 0, "a finite number > 0")
        for name in ("weight_decay", "clipnorm"):
            check(name, lambda v: number(v) and v >= 0, "a finite number >= 0")
        check("dropout", lambda v: number(v) and 0 <= v < 1, "a number in [0, 1)")
        check("decay", lambda v: v in DECAYS, f"one of {', '.join(DECAYS)}")
        check("initializer_range", lambda v: number(v) and v > 0, "a finite number > 0")
        check("tokenizer", lambda v: v in ("wordpiece", "bpe"), "one of wordpiece, bpe")
        if self.tokenizer == "bpe" and self.lowercase:
            raise ValueError("tokenizer=bpe keeps every byte of the text and cannot lowercase: set lowercase=false.")


def check_field(config, name, ok, requirement):
    """Raises ValueError when `ok(config.<name>)` is false: the field, the requirement, the value
    and how to give another (for `RecipeConfig.validate` and its subclasses)."""
    value = getattr(config, name)
    if not ok(value):
        raise ValueError(f"{name} must be {requirement}, got {value!r}. Give another value (on the command "
                         f"line: --set {name}=VALUE).")


def is_finite_number(value):
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


class Recipe(Task):
    """Base class. Subclasses set `config_class`, `presets` and `kind`, and implement the model
    and data parts and the task's `export_module` and `evaluator`."""

    name = None  # set by @recipes.register
    config_class = RecipeConfig
    presets = {}
    default_preset = "tiny"

    def __init__(self, config):
        self.config = config
        self.tokenizer = None
        self._preprocessor = None

    # -- configuration -------------------------------------------------------------------

    def config_dict(self):
        return {"recipe": self.name, **dataclasses.asdict(self.config)}

    def with_overrides(self, **overrides):
        """A copy of this recipe with config fields replaced (checked like `recipes.get`)."""
        from recipes.registry import resolve_config

        values = {k: v for k, v in dataclasses.asdict(self.config).items() if k != "preset"}
        values.update(overrides)
        clone = type(self)(resolve_config(type(self), self.config.preset, values))
        clone.tokenizer = self.tokenizer
        return clone

    # -- tokenizer -----------------------------------------------------------------------

    def get_tokenizer(self, source=None):
        """The recipe's tokenizer (config `tokenizer`: wordpiece or bpe), trained on the source's
        training split on first use and cached on disk by source, kind, vocabulary size and casing."""
        if self.tokenizer is None:
            from zoo.data import tokenizer

            source = source or self.config.data
            texts = self.tokenizer_training_texts(source)
            self.tokenizer = tokenizer.train_tokenizer(
                texts,
                self.config.vocabulary_size,
                lowercase=self.config.lowercase,
                cache_dir=tokenizer.default_cache_dir(),
                cache_key=tokenizer_cache_key(source),
                kind=self.config.tokenizer,
            )
        return self.tokenizer

    def tokenizer_training_texts(self, source):
        from zoo.data import corpora

        return corpora.text_documents(source, "train")

    @property
    def preprocessor(self):
        """The recipe's `zoo.data.preprocessing` layer: the only code that turns its text into
        the model's ids (pipelines, generation, evaluation and export all call it). It wraps
        `tokenizer`, which must be set (trained by `datasets()` / `get_tokenizer()`, or loaded
        with a checkpoint); a new tokenizer gets a new preprocessor."""
        if self.tokenizer is None:
            raise ValueError(
                f"{self.name}: no tokenizer yet, so no preprocessor: call datasets() or get_tokenizer() first, "
                "or load one with the checkpoint."
            )
        if self._preprocessor is None or self._preprocessor.tokenizer is not self.tokenizer:
            self._preprocessor = self.make_preprocessor(self.tokenizer)
        return self._preprocessor

    def make_preprocessor(self, tokenizer):
        """The recipe's preprocessor over `tokenizer` (subclasses choose the kind and its settings)."""
        raise NotImplementedError

    @property
    def model_vocabulary_size(self):
        """The tokenizer's vocabulary once known (it can be smaller than asked for), else the config's."""
        return self.tokenizer.vocabulary_size() if self.tokenizer is not None else self.config.vocabulary_size

    # -- model ---------------------------------------------------------------------------

    def make_optimizer(self, total_steps=None):
        c = self.config
        return make_optimizer(
            c.learning_rate,
            total_steps or c.total_steps,
            warmup_steps=c.warmup_steps,
            decay=c.decay,
            weight_decay=c.weight_decay,
            clipnorm=c.clipnorm,
            gradient_accumulation_steps=c.gradient_accumulation_steps,
        )

    def build_model(self, total_steps=None, jit_compile="auto"):
        """A compiled keras.Model: the architecture, loss, AdamW optimiser and metrics."""
        keras.utils.set_random_seed(self.config.seed)
        model = self.create_model()
        self.compile_model(model, total_steps=total_steps, jit_compile=jit_compile)
        return model

    def create_model(self):
        raise NotImplementedError

    def kernel_initializer(self):
        """BERT's initialisation, the encoder recipes' default: truncated normal(0, initializer_range)
        (cut at two standard deviations), seeded with the config's `seed`."""
        return keras.initializers.TruncatedNormal(stddev=self.config.initializer_range, seed=self.config.seed)

    def compile_model(self, model, total_steps=None, jit_compile="auto"):
        raise NotImplementedError

    # -- data ----------------------------------------------------------------------------

    def datasets(self, source=None, batch_size=None, splits=("train", "validation"), repeat=False):
        """tf.data pipelines for `splits` (a tuple of datasets, in that order).

        With `repeat`, each dataset is an endless sequence of passes over its split, every
        pass's order a function of (seed, pass number) only: iterating it again, in another
        process or on another worker, replays the same batches.
        """
        raise NotImplementedError

    def _limit(self, documents):
        return documents[: self.config.max_documents] if self.config.max_documents else documents

    # -- checkpoints and export ----------------------------------------------------------

    def save(self, model, directory):
        """A self-contained checkpoint: `model.keras`, `tokenizer/`, `preprocessor.json` (the
        preprocessor's kind, sequence length and truncation rule) and `config.json`."""
        from zoo.data.preprocessing import save_preprocessor

        os.makedirs(directory, exist_ok=True)
        model.save(os.path.join(directory, "model.keras"))
        if self.tokenizer is not None:
            save_preprocessor(self.preprocessor, directory)
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(self.config_dict(), f, indent=2)

    def export_metadata(self):
        """(name, config) for the export's metadata: the recipe's name and resolved config."""
        return self.name, self.config_dict()


def tokenizer_cache_key(source):
    """Names a tokenizer cache entry: the built-in source's name (with the Python version for
    `stdlib`), or for local files a digest of their absolute path, size and modification time."""
    import glob
    import hashlib
    import sys

    if source == "stdlib":
        return f"stdlib-py{sys.version_info.major}.{sys.version_info.minor}"
    if not (os.path.exists(source) or glob.has_magic(source)):
        return source
    paths = sorted(glob.glob(source, recursive=True)) if glob.has_magic(source) else [source]
    digest = hashlib.md5()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return "local-" + digest.hexdigest()[:12]


def load_checkpoint(path):
    """(model, tokenizer, config dict) from a checkpoint directory, a run directory or a `.keras` file.

    A run directory holds checkpoints in `checkpoints/best/` (preferred) and `checkpoints/last/`;
    a `.keras` file may have a `tokenizer/` directory beside it.
    """
    from zoo.data.tokenizer import load_tokenizer

    if os.path.isdir(path):
        for candidate in (path, os.path.join(path, "checkpoints", "best"), os.path.join(path, "checkpoints", "last")):
            if os.path.exists(os.path.join(candidate, "model.keras")):
                path = os.path.join(candidate, "model.keras")
                break
        else:
            raise FileNotFoundError(f"No model.keras in {path!r} (nor in its checkpoints/best or checkpoints/last).")
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint at {path!r}: expected a .keras file or a directory holding model.keras.")
    directory = os.path.dirname(path)
    model = keras.saving.load_model(path)
    tokenizer_dir = os.path.join(directory, "tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir) if os.path.isdir(tokenizer_dir) else None
    config_path = os.path.join(directory, "config.json")
    config = json.load(open(config_path)) if os.path.exists(config_path) else {}
    return model, tokenizer, config
