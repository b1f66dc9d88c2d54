"""The Task interface: what a trained model offers besides `fit`, in one place per task.

Export, serving, evaluation, sweeps and the `zoo` command line reach a task only through this
interface, never through its name, so a new task (every recipe is one) plugs into all of them by
filling it in:

- `preprocessor`: the one layer that turns the task's text into the model's ids
  (`zoo.data.preprocessing`); training pipelines, evaluation and every export signature call it.
- `kind`: what its data are, which decides the evaluation commands that apply: `"classification"`
  (labelled texts: shifted copies, per-class metrics, few-shot curves) or `"language_model"`
  (corpora: perplexity and, with `tokens_per_byte_of`, bits per byte per corpus).
- `export_module(model, **options)`: the named signatures of its SavedModel
  (`zoo.export.ExportModule`), with `export_options` the options it takes.
- `export_hf(model, directory)` and `onnx_model(model)` (optional): the Hugging Face layout and
  the Keras model behind the ONNX export (`zoo.converters`, `zoo export --format hf|onnx`).
- `evaluator(model)`: a `zoo.evaluation` evaluator whose `evaluate(sources, ...)` returns a report.
- `report(report)`: that report as markdown (what `zoo evaluate` and `zoo learning-curve` print
  and write to report.md).
- `tokens_per_byte_of(source, split)`: tokens per UTF-8 byte of a split for a task whose loss is a
  code length of the text (causal LMs), so that `zoo evaluate` and the trainer add bits per
  byte; None for the others.
- `training_sample(model)`: what `zoo train` prints after the final metrics (a causal LM: a
  sampled continuation); None for nothing.

`Task.export(model, path)` writes the SavedModel through `zoo.export.export_savedmodel`.
"""

from zoo import evaluation

# Keras' post-training quantization modes that `Task.export(quantize=...)` offers.
QUANTIZATION_MODES = ("int8",)


class Task:
    """Base class of tasks. Subclasses set `name` and `kind` and fill in the methods below."""

    name = None
    kind = None  # "classification" | "language_model"
    # Export options the task's `export_module` takes: name -> description (for errors and --help).
    export_options = {}

    @property
    def preprocessor(self):
        raise NotImplementedError

    def export_module(self, model, **options):
        """The `zoo.export.ExportModule` of `model` (options: see `export_options`)."""
        raise NotImplementedError(f"{self.name} has no SavedModel export.")

    def export_metadata(self):
        """(name, config dict) that the export's metadata records."""
        return self.name, {}

    def export(self, model, path, metrics=None, ids_only=False, quantize=None, **options):
        """Writes `model` as a SavedModel with this task's signatures to `path`; returns `path`.

        `ids_only`: only the signatures that take token ids, in core TensorFlow ops (for the stock
        TF Serving image; see `zoo.export.export_savedmodel`). `quantize="int8"`: Keras' own
        post-training quantization (`model.quantize`, int8 weights with per-channel scales) of
        every Dense, EinsumDense and Embedding layer, applied to `model` itself before the export.
        Options left as None are ignored; an option the task does not take raises ValueError
        naming the ones it does.
        """
        from zoo.export import export_savedmodel

        given = {key: value for key, value in options.items() if value is not None}
        unknown = sorted(set(given) - set(self.export_options))
        if unknown:
            described = "; ".join(f"{k}: {v}" for k, v in sorted(self.export_options.items())) or "none"
            raise ValueError(f"A {self.name} export has no option {unknown[0]!r}. Its options: {described}.")
        if quantize is not None:
            if quantize not in QUANTIZATION_MODES:
                raise ValueError(f"Unknown quantization {quantize!r}; expected one of {', '.join(QUANTIZATION_MODES)}.")
            import warnings

            with warnings.catch_warnings():  # norms and position tables stay float32, as intended
                warnings.filterwarnings("ignore", message=r".*does not have a `quantize` method")
                model.quantize(quantize)
        name, config = self.export_metadata()
        module = self.export_module(model, **given)
        return export_savedmodel(module, path, name, config=config, metrics=metrics, ids_only=ids_only,
                                 quantization=quantize)

    def export_hf(self, model, directory, metrics=None):
        """Writes `model` in the Hugging Face layout to the new `directory` (`zoo.converters.hf_export`); returns it."""
        raise NotImplementedError(f"No Hugging Face layout for {self.name}.")

    def onnx_model(self, model):
        """The Keras model the ONNX export converts: a dict of named int32 `[batch, length]` id
        inputs to a dict of named outputs (`zoo.converters.onnx_export`)."""
        raise NotImplementedError(f"No ONNX export for {self.name}.")

    def evaluator(self, model):
        """A `zoo.evaluation` evaluator of `model` (`ClassificationEvaluator`, `LanguageModelEvaluator`)."""
        raise NotImplementedError(f"{self.name} has no evaluator.")

    def report(self, report):
        """A report from `evaluator(model).evaluate(...)` (or a learning curve's rows) as markdown
        tables: what `zoo evaluate` and `zoo learning-curve` print and write to report.md."""
        return evaluation.markdown_report(report)

    def tokens_per_byte_of(self, source=None, split="validation"):
        """Tokens per UTF-8 byte of a split of `source` (default: the task's data) for a task whose
        per-token loss is a code length of the text (a causal LM), which turns that loss into bits
        per byte (`zoo.evaluation.bits_per_byte`: plain `zoo evaluate`, the trainer's
        `val_bits_per_byte`). None, the default, for the others: a masked LM predicts 15% of the
        tokens from both sides, so its loss is no code length of the text."""
        return None

    def training_sample(self, model):
        """Text that `zoo train` prints after the final metrics (a causal LM: a sampled
        continuation of its prompt); None, the default, for none."""
        return None
