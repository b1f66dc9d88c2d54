"""Evaluation beyond one accuracy: distribution shifts, per-class metrics, perplexity per source, few-shot subsets.

A task (`zoo.tasks.Task`) gives its evaluator with `task.evaluator(model)`; every evaluator has
`evaluate(sources, split="test", ...)`, which returns a report (a plain dict of JSON types).

Classifiers: `ClassificationEvaluator(classifier, preprocessor, examples, label_names)`
    scores a model on named labelled sets (`score(sets)`: the first is the in-domain reference)
    and reports, per set, accuracy, macro and per-class precision / recall / F1, the confusion
    matrix and the accuracy gap to the reference; `evaluate` builds the sets from sources and
    adds shifted copies of the first (`shift_sets`, the spec language of `parse_shifts`).
Language models: `LanguageModelEvaluator(model, datasets)`
    loss, perplexity and token accuracy per corpus, e.g. the training corpus's held-out split
    against another corpus; with `tokens_per_byte` also bits per byte (`bits_per_byte`), which,
    unlike perplexity, compares across tokenizers.
Few-shot: `few_shot_examples(examples, shots_per_class, seed)` picks K training examples per
    class (the learning curve that trains on them is `trainers.reports.learning_curve`).
Writers: `write_report(report, directory)`: `report.json`, `report.md`, `confusion_<set>.png` and
    TensorBoard scalars (`tb/`); or one at a time with `write_json`, `write_markdown`,
    `write_confusion_png`, `write_tensorboard`.
"""

import json
import math
import os

import numpy as np

from zoo.data import shifts
from zoo.data.corpora import LabelledExamples, stable_hash

# The built-in shifted copies of a test set: name -> what `shift_sets` does to it.
SHIFTS = {
    "in_domain": "the set itself (the reference of every gap)",
    "char_noise_10": "typos on 10% of letters (`character_noise`, rate 0.1)",
    "char_noise_30": "typos on 30% of letters (`character_noise`, rate 0.3)",
    "word_dropout_20": "20% of words dropped (`word_dropout`, rate 0.2)",
    "upper_case": "upper-cased",
    "lower_case": "lower-cased",
    "short": "the examples shorter than the median word count (a subset)",
    "long": "the examples at or above the median word count (a subset)",
}


# -- classifiers -------------------------------------------------------------------------------


def classification_metrics(labels, predictions, label_names):
    """Accuracy, macro and per-class precision / recall / F1 and the confusion matrix.

    The confusion matrix is `[true class][predicted class]` counts. Macro averages leave out
    classes that are neither present nor predicted (as `zoo.models.MacroClassificationMetric`);
    a class never predicted has precision 0.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    num_classes = len(label_names)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    true_positives = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)
    actual = confusion.sum(axis=1).astype(np.float64)
    precision = np.divide(true_positives, predicted, out=np.zeros(num_classes), where=predicted > 0)
    recall = np.divide(true_positives, actual, out=np.zeros(num_classes), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_classes), where=precision + recall > 0)
    present = (predicted > 0) | (actual > 0)
    count = max(int(present.sum()), 1)
    return {
        "num_examples": int(len(labels)),
        "accuracy": float(true_positives.sum() / max(len(labels), 1)),
        "macro_precision": float(precision[present].sum() / count),
        "macro_recall": float(recall[present].sum() / count),
        "macro_f1": float(f1[present].sum() / count),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(actual[i])}
            for i, name in enumerate(label_names)
        },
        "confusion": confusion.tolist(),
    }


class ClassificationEvaluator:
    """Scores a classifier on labelled sets: what a classification task's `evaluator(model)` gives.

    Args:
        classifier: a Keras model mapping `{"token_ids", "padding_mask"}` to class logits.
        preprocessor: the task's preprocessor (its `pack` / `tokenize` prepare the texts).
        examples: `fn(source, split)` -> `zoo.data.corpora.LabelledExamples` of a source.
        label_names: the class names, in label order (default "0", "1", ...).
        batch_size: examples per prediction batch.
    """

    kind = "classification"

    def __init__(self, classifier, preprocessor, examples=None, label_names=None, batch_size=32):
        self.classifier = classifier
        self.preprocessor = preprocessor
        self.examples = examples
        self.label_names = list(label_names) if label_names is not None else None
        self.batch_size = batch_size

    def predict_logits(self, texts):
        """Float32 logits `[len(texts), num_classes]`, texts prepared by the preprocessor."""
        from zoo.data.pipelines import classification_dataset

        texts = list(texts)
        dataset = classification_dataset(texts, [0] * len(texts), self.preprocessor, self.batch_size, shuffle=False)
        return np.asarray(self.classifier.predict(dataset.map(lambda x, y: x), verbose=0), dtype=np.float32)

    def score(self, sets):
        """Scores the classifier on named labelled sets; the first set is the in-domain reference.

        Args:
            sets: an ordered dict of name -> (texts, labels); empty sets are skipped.

        Returns:
            {"kind": "classification", "label_names": [...], "in_domain": <first set's name>,
             "sets": {name: {num_examples, accuracy, macro_precision, macro_recall, macro_f1,
                             per_class, confusion, accuracy_gap, macro_f1_gap}}},
            with `accuracy_gap` = in-domain accuracy - this set's accuracy (0 for the reference;
            positive when the shift hurts) and `macro_f1_gap` likewise.
        """
        sets = {name: (list(texts), list(labels)) for name, (texts, labels) in sets.items()}
        if not sets:
            raise ValueError("ClassificationEvaluator.score needs at least one set of (texts, labels).")
        reference = next(iter(sets))
        if not sets[reference][0]:
            raise ValueError(f"The in-domain set {reference!r} is empty.")
        names = self.label_names or [str(i) for i in range(self.classifier.output_shape[-1])]
        report = {"kind": "classification", "label_names": names, "in_domain": reference, "sets": {}}
        for name, (texts, labels) in sets.items():
            if len(texts) != len(labels):
                raise ValueError(f"Set {name!r} has {len(texts)} texts but {len(labels)} labels.")
        # One prediction pass over all the sets together: one pipeline and one traced predict function.
        all_texts = [text for texts, _ in sets.values() for text in texts]
        predictions = self.predict_logits(all_texts).argmax(axis=-1)
        offset = 0
        for name, (texts, labels) in sets.items():
            if texts:
                report["sets"][name] = classification_metrics(labels, predictions[offset : offset + len(texts)], names)
            offset += len(texts)
        base = report["sets"][reference]
        for metrics in report["sets"].values():
            metrics["accuracy_gap"] = base["accuracy"] - metrics["accuracy"]
            metrics["macro_f1_gap"] = base["macro_f1"] - metrics["macro_f1"]
        return report

    def evaluate(self, sources, split="test", shifts=None, seed=0, max_examples=0, steps=0):
        """`score` on each source's `split`, and on shifted copies of the first source's.

        Args:
            sources: labelled sources (e.g. ["wordnet"]); the first is the in-domain reference.
            shifts: None for no shifted copies, else a `parse_shifts` spec ("" or "all": the standard ones).
            seed: the seed of the shifts' corruptions.
            max_examples: at most this many examples per source (0: all).
            steps: unused (language models take it).
        """
        if self.examples is None:
            raise ValueError("This evaluator has no examples(source, split): call score(sets) instead.")
        sets, shifted = {}, {}
        for index, source in enumerate(sources):
            if source in sets:
                raise ValueError(f"--data {source!r} is given twice.")
            examples = self.examples(source, split)
            if self.label_names is None:
                self.label_names = list(examples.label_names)
            texts, labels = examples.texts, examples.labels
            if max_examples:
                texts, labels = texts[:max_examples], labels[:max_examples]
            sets[source] = (texts, labels)
            if index == 0 and shifts is not None:  # reported after the sources
                shifted = shift_sets(texts, labels, seed=seed, spec=shifts)
                del shifted["in_domain"]
        sets.update(shifted)
        report = self.score(sets)
        report.update(split=split, seed=seed)
        return report


# The spec `shift_sets` uses when given none: one entry per `SHIFTS` name after in_domain.
DEFAULT_SHIFTS = "char_noise=0.1,char_noise=0.3,word_dropout=0.2,case=upper,case=lower,length"
SHIFT_KINDS = {
    "char_noise": "typos at RATE per letter (default 0.1), set `char_noise_<percent>`",
    "word_dropout": "each word dropped with probability RATE (default 0.2), set `word_dropout_<percent>`",
    "case": "upper | lower | title | random (default upper), set `<mode>_case`",
    "length": "split by word count at B1/B2/... (default: the median), sets `short`/`long` or `words<B1`, ...",
}


def parse_shifts(spec):
    """`"char_noise=0.2,word_dropout,case=random,length=8/16"` -> [(kind, value), ...].

    Each comma-separated item is `kind` or `kind=value`, kinds from `SHIFT_KINDS`; "all" (or an
    empty spec) stands for `DEFAULT_SHIFTS`. Unknown kinds and bad values raise a ValueError
    that lists the valid ones.
    """
    if isinstance(spec, (list, tuple)):
        spec = ",".join(spec)
    spec = (spec or "all").strip()
    if spec == "all":
        spec = DEFAULT_SHIFTS
    parsed = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        if item == "all":
            parsed.extend(parse_shifts(DEFAULT_SHIFTS))
            continue
        kind, _, value = item.partition("=")
        kind, value = kind.strip(), value.strip()
        if kind not in SHIFT_KINDS:
            valid = "; ".join(f"{name}: {text}" for name, text in SHIFT_KINDS.items())
            raise ValueError(f"Unknown shift {kind!r}. Valid shifts (comma-separated, KIND or KIND=VALUE, or all): {valid}.")
        try:
            if kind in ("char_noise", "word_dropout"):
                rate = float(value) if value else (0.1 if kind == "char_noise" else 0.2)
                if not 0.0 <= rate <= 1.0:
                    raise ValueError(f"rate must be in [0, 1], got {rate}")
                parsed.append((kind, rate))
            elif kind == "case":
                mode = value or "upper"
                if mode not in shifts.CASE_MODES:
                    raise ValueError(f"mode must be one of {', '.join(shifts.CASE_MODES)}, got {mode!r}")
                parsed.append((kind, mode))
            else:
                parsed.append((kind, [int(b) for b in value.split("/")] if value else None))
        except ValueError as error:
            raise ValueError(f"Bad shift {item!r}: {error}.") from None
    return parsed


def shift_sets(texts, labels, seed=0, spec=None):
    """The in-domain set and shifted copies of it, as an ordered dict name -> (texts, labels).

    `spec` says which shifts (see `parse_shifts`); the default gives the sets of `SHIFTS`. The
    corruptions are deterministic for `seed` (see `zoo.data.shifts`).
    """
    texts, labels = list(texts), list(labels)
    sets = {"in_domain": (texts, labels)}
    for kind, value in parse_shifts(spec):
        if kind == "char_noise":
            sets[f"char_noise_{value * 100:g}"] = (shifts.character_noise(texts, value, seed), labels)
        elif kind == "word_dropout":
            sets[f"word_dropout_{value * 100:g}"] = (shifts.word_dropout(texts, value, seed), labels)
        elif kind == "case":
            sets[f"{value}_case"] = (shifts.change_case(texts, value, seed), labels)
        elif texts:
            sets.update(shifts.length_buckets(texts, labels, value))
    return sets


# -- language models ---------------------------------------------------------------------------


def bits_per_byte(loss, tokens_per_byte):
    """Bits per byte of a causal LM: `loss / ln 2 x tokens / bytes`.

    `loss` is the mean next-token cross-entropy in nats per token (Keras' `loss`, the log of the
    perplexity); divided by ln 2 it is bits per token, and times the tokens per byte of the
    evaluated text (a causal LM task's `tokens_per_byte(source, split)`: every token of every document plus
    its one end token, over the sum of the documents' UTF-8 lengths) it is bits per byte of the
    text. A byte-level BPE and a WordPiece model of the same text have the same byte count, so
    their bits per byte compare where their perplexities do not. With a lossless tokenizer
    (byte-level BPE) it is the code length of the text itself, as an arithmetic coder driven by
    the model would reach; WordPiece drops the whitespace layout and maps unknown characters to
    `[UNK]`, so its figure codes slightly less than the whole text (it flatters WordPiece a little).

    Two approximations, both small on a whole split: the loss is the mean over the tokens the
    pipeline's packed blocks predict, which leave out the stream's last partial block (and
    `steps` / the trainer's `validation_steps` may stop earlier), while `tokens_per_byte` is the
    split's average; and within a block of T + 1 stream tokens the first is context only and the
    early ones are predicted from little context. Defined for causal LMs only: a
    masked LM's loss is over 15% of the tokens, each seen with both sides.
    """
    return float(loss) / math.log(2) * float(tokens_per_byte)


class LanguageModelEvaluator:
    """Loss, perplexity and token accuracy of a language model per corpus: what a language-model
    task's `evaluator(model)` gives.

    Args:
        model: the model, compiled with the task's loss and metrics (a perplexity metric, and
            `accuracy` where the task has one).
        datasets: `fn(source, split)` -> a tf.data pipeline of the source's split, tokenized
            with the model's own tokenizer (never retrained on the new source).
        tokens_per_byte: `fn(source, split)` -> tokens per UTF-8 byte of that split, for a
            causal LM (bits per byte); None for a masked LM, where they are not defined the same way.
    """

    kind = "language_model"

    def __init__(self, model, datasets, tokens_per_byte=None):
        self.model = model
        self.datasets = datasets
        self.tokens_per_byte = tokens_per_byte

    def evaluate(self, sources, split="test", shifts=None, seed=0, max_examples=0, steps=0):
        """Each source's `split`; the first source is the reference: `perplexity_ratio` =
        perplexity / the first source's perplexity. `steps`: at most this many batches per
        source (0: the whole split).

        Returns:
            {"kind": "language_model", "in_domain": sources[0], "split": split,
             "sources": {source: {loss, perplexity, accuracy, perplexity_ratio
                                  [, tokens_per_byte, bits_per_byte]}}}.
        """
        if shifts is not None:
            raise ValueError(
                "--shifts corrupts labelled texts (classification tasks). For a language model, compare "
                "corpora instead: --data stdlib --data python-docs."
            )
        sources = list(sources)
        if not sources:
            raise ValueError("LanguageModelEvaluator.evaluate needs at least one source.")
        report = {"kind": "language_model", "in_domain": sources[0], "split": split, "sources": {}}
        for source in sources:
            if source in report["sources"]:
                raise ValueError(f"--data {source!r} is given twice.")
            dataset = self.datasets(source, split)
            if steps:
                dataset = dataset.take(steps)
            metrics = self.model.evaluate(dataset, return_dict=True, verbose=0)
            report["sources"][source] = {
                "loss": float(metrics["loss"]),
                "perplexity": float(metrics.get("perplexity", np.exp(metrics["loss"]))),
                "accuracy": float(metrics.get("accuracy", float("nan"))),
            }
            if self.tokens_per_byte is not None:
                ratio = self.tokens_per_byte(source, split)
                report["sources"][source]["tokens_per_byte"] = ratio
                report["sources"][source]["bits_per_byte"] = bits_per_byte(metrics["loss"], ratio)
        reference = report["sources"][sources[0]]["perplexity"]
        for metrics in report["sources"].values():
            metrics["perplexity_ratio"] = metrics["perplexity"] / reference
        return report


# -- few-shot ----------------------------------------------------------------------------------


def few_shot_examples(examples, shots_per_class, seed=0):
    """K examples per class, chosen deterministically: the same (examples, K, seed) give the same subset.

    Within each class the examples are ranked by a stable hash of (seed, text) and the first K
    kept, so the subsets are nested: the 8 examples of K=8 are among the 32 of K=32 (same seed).
    The result is ordered by hash too, which interleaves the classes.

    Args:
        examples: `LabelledExamples` (texts, labels, label_names).
        shots_per_class: K; None or 0 keeps every example.
        seed: an integer.

    Raises:
        ValueError: when a class has fewer than K examples.
    """
    if not shots_per_class:
        return LabelledExamples(list(examples.texts), list(examples.labels), list(examples.label_names))
    shots_per_class = int(shots_per_class)
    if shots_per_class < 0:
        raise ValueError(f"shots_per_class must be >= 0, got {shots_per_class}.")
    by_class = {}
    for text, label in zip(examples.texts, examples.labels):
        by_class.setdefault(int(label), []).append(text)
    chosen = []
    for label_id, name in enumerate(examples.label_names):
        texts = by_class.get(label_id, [])
        if len(texts) < shots_per_class:
            raise ValueError(
                f"Class {name!r} has {len(texts)} examples, fewer than shots_per_class={shots_per_class}."
            )
        ranked = sorted(texts, key=lambda text: (stable_hash(f"{seed}\x00{text}"), text))
        chosen.extend((stable_hash(f"{seed}\x00{text}"), text, label_id) for text in ranked[:shots_per_class])
    chosen.sort()
    return LabelledExamples([t for _, t, _ in chosen], [label for _, _, label in chosen], list(examples.label_names))


def learning_curve_png_bytes(rows, title="few-shot learning curve"):
    """A PNG (bytes) of accuracy against training examples per class (log scale), one line per init."""
    points = {}
    for row in rows:
        shots = row["shots_per_class"]
        count = shots if shots != "all" else None
        points.setdefault(row["init"], []).append((count, row["train_examples"], row["accuracy"], str(shots)))
    # "all" sits at its real examples per class: its training examples over the number of
    # classes (K-shot rows have K x classes examples); at 1 when there is no K-shot row.
    finite = [(c, examples) for series in points.values() for c, examples, *_ in series if c]
    classes = max(1, round(finite[0][1] / finite[0][0])) if finite else 1

    def x(count, examples):
        return count if count else (examples / classes if finite else 1)

    series = {init: [(x(c, n), accuracy, label) for c, n, accuracy, label in values] for init, values in points.items()}
    return line_plot_png_bytes(series, "examples per class (log scale)", "test accuracy", title, log_x=True)


# -- writers -----------------------------------------------------------------------------------


def _fmt(value, digits=4):
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_report(report):
    """A report (classification, language model, or learning-curve rows) as markdown tables."""
    if isinstance(report, list):  # learning_curve rows
        lines = ["| init | shots/class | train examples | steps | accuracy | macro F1 |", "|---|---:|---:|---:|---:|---:|"]
        for row in report:
            lines.append(
                f"| {row['init']} | {row['shots_per_class']} | {row['train_examples']} | {row['steps']} "
                f"| {_fmt(row['accuracy'])} | {_fmt(row['macro_f1'])} |"
            )
        return "\n".join(lines) + "\n"
    if report.get("kind") == "language_model":
        bpb = all("bits_per_byte" in m for m in report["sources"].values())  # causal LMs
        lines = [
            f"Language model, split `{report['split']}` (reference: `{report['in_domain']}`)", "",
            "| source | perplexity | x reference | loss | token accuracy |" + (" bits per byte |" if bpb else ""),
            "|---|---:|---:|---:|---:|" + ("---:|" if bpb else ""),
        ]
        for source, m in report["sources"].items():
            lines.append(
                f"| {source} | {m['perplexity']:.2f} | {m['perplexity_ratio']:.2f} | {m['loss']:.4f} | {m['accuracy']:.4f} |"
                + (f" {m['bits_per_byte']:.4f} |" if bpb else "")
            )
        if bpb:
            lines += ["", "Bits per byte: loss / ln 2 x tokens / UTF-8 bytes of the split; unlike perplexity, "
                      "they compare across tokenizers."]
        return "\n".join(lines) + "\n"
    reference = report["in_domain"]
    lines = [
        f"Classifier under distribution shift (reference: `{reference}`)", "",
        "| set | examples | accuracy | gap | macro F1 | F1 gap |", "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in report["sets"].items():
        lines.append(
            f"| {name} | {m['num_examples']} | {m['accuracy']:.4f} | {m['accuracy_gap']:+.4f} "
            f"| {m['macro_f1']:.4f} | {m['macro_f1_gap']:+.4f} |"
        )
    base = report["sets"][reference]
    lines += ["", f"Per class (`{reference}`)", "", "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for name, m in base["per_class"].items():
        lines.append(f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    names = report["label_names"]
    lines += ["", f"Confusion matrix (`{reference}`; rows: true, columns: predicted)", ""]
    lines.append("| true \\ predicted | " + " | ".join(names) + " |")
    lines.append("|---|" + "---:|" * len(names))
    for name, row in zip(names, base["confusion"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_json(report, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    return path


def write_markdown(report, path, markdown=None):
    """Writes `markdown` (default: `markdown_report(report)`) to `path`; returns it."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(markdown_report(report) if markdown is None else markdown)
    return path


def _pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _png_bytes(figure, dpi):
    """The figure as PNG bytes at exactly its size in inches x `dpi` pixels; closes it."""
    import io

    pyplot = _pyplot()
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    finally:
        pyplot.close(figure)
    return buffer.getvalue()


def confusion_png_bytes(confusion, label_names, title=""):
    """A PNG (bytes) of a confusion matrix drawn with matplotlib: rows true, columns predicted,
    each cell shaded by its share of the row (blue on the diagonal: correct; red off it: errors),
    the count printed in it. The image grows with the number of classes (about 0.6 inch a class
    at 100 dpi, at least 4.8 x 4 inches)."""
    pyplot = _pyplot()
    from matplotlib.colors import LinearSegmentedColormap

    confusion = np.asarray(confusion, dtype=np.int64)
    count = len(label_names)
    if confusion.shape != (count, count):
        raise ValueError(f"confusion has shape {confusion.shape}, expected ({count}, {count}) for {count} labels.")
    rows = confusion.sum(axis=1, keepdims=True)
    shares = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    diagonal = np.eye(count, dtype=bool)
    label_inches = 0.075 * max([len(str(name)) for name in label_names] + [6])
    figure, axes = pyplot.subplots(figsize=(max(4.8, 1.6 + label_inches + 0.6 * count), max(4.0, 1.8 + 0.6 * count)))
    blues = LinearSegmentedColormap.from_list("correct", ["white", "royalblue"])
    reds = LinearSegmentedColormap.from_list("errors", ["white", "crimson"])
    axes.imshow(np.ma.masked_where(~diagonal, shares), cmap=blues, vmin=0, vmax=1)
    axes.imshow(np.ma.masked_where(diagonal, shares), cmap=reds, vmin=0, vmax=1)
    font_size = 11 if count <= 8 else 8
    for i in range(count):
        for j in range(count):
            axes.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=font_size,
                      color="white" if shares[i, j] > 0.6 else "black")
    axes.set_xticks(range(count), [str(j) for j in range(count)])
    axes.set_yticks(range(count), [f"{name}  {i}" for i, name in enumerate(label_names)])
    axes.set_xticks(np.arange(count + 1) - 0.5, minor=True)
    axes.set_yticks(np.arange(count + 1) - 0.5, minor=True)
    axes.grid(which="minor", color="gray", linewidth=0.5)
    axes.tick_params(which="minor", length=0)
    axes.set_xlabel("predicted class (index)")
    axes.set_ylabel("true class")
    axes.set_title(title or "confusion matrix", fontsize=11)
    figure.text(0.01, 0.01, "shade = share of the true class's row; blue: correct, red: errors", fontsize=8,
                color="dimgray")
    figure.tight_layout(rect=(0.03, 0.04, 1, 1))
    return _png_bytes(figure, dpi=100)


def line_plot_png_bytes(series, xlabel, ylabel, title="", log_x=False, size=(640, 420)):
    """A PNG (bytes) line plot drawn with matplotlib: one line per series, points labelled.

    The image is `size` pixels (width, height) at 100 dpi. With several series a legend names
    them; a single series has none (the title says what it is).

    Args:
        series: {name: [(x, y, point_label), ...]} (the point label may be "" or left out);
            points are joined in the order given.
        xlabel, ylabel, title: axis labels and title.
        log_x: a logarithmic x axis (x must be > 0), ticks at powers of ten (and 2x, 5x of
            them when the axis spans less than two decades), written as plain numbers.
    """
    points = [(float(x), float(y)) for values in series.values() for x, y, *_ in values]
    if not points:
        raise ValueError("line_plot_png_bytes needs at least one point.")
    if log_x and min(x for x, _ in points) <= 0:
        raise ValueError("A logarithmic x axis needs x > 0.")
    pyplot = _pyplot()
    from matplotlib import ticker

    dpi = 100
    figure, axes = pyplot.subplots(figsize=(size[0] / dpi, size[1] / dpi), layout="constrained")
    scale = np.log10 if log_x else (lambda value: value)
    x_low, x_high = scale(min(x for x, _ in points)), scale(max(x for x, _ in points))
    for index, (name, values) in enumerate(series.items()):
        xs = [float(value[0]) for value in values]
        ys = [float(value[1]) for value in values]
        (line,) = axes.plot(xs, ys, marker="o", markersize=5, linewidth=2, label=str(name), color=f"C{index % 10}")
        for number, (x, y, *rest) in enumerate(values):
            if not (rest and str(rest[0])):
                continue
            # Right of the point, or left of it in the right part of the plot; alternately above
            # and below it, so that the labels of neighbouring points do not overprint each other.
            right_side = x_high > x_low and (scale(float(x)) - x_low) / (x_high - x_low) > 0.6
            offset = (-5 if right_side else 5, 5 if number % 2 == 0 else -12)
            label = axes.annotate(str(rest[0]), (float(x), float(y)), xytext=offset, textcoords="offset points",
                                  fontsize=8, color=line.get_color(), ha="right" if right_side else "left")
            label.set_in_layout(False)  # the layout fits the axes to the figure, not to the labels
    if log_x:
        axes.set_xscale("log")
        xs = [x for x, _ in points]
        span = np.log10(max(xs)) - np.log10(min(xs))
        axes.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0,) if span >= 2 else (1.0, 2.0, 5.0)))
        axes.xaxis.set_minor_formatter(ticker.NullFormatter())
        axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.margins(x=0.08, y=0.12)
    axes.grid(True, which="major", color="0.88")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=11)
    if len(series) > 1:
        axes.legend(loc="best", fontsize=9)
    return _png_bytes(figure, dpi=dpi)


def write_confusion_png(confusion, label_names, path, title=""):
    """Writes `confusion_png_bytes` (a matplotlib PNG) to `path`."""
    with open(path, "wb") as f:
        f.write(confusion_png_bytes(confusion, label_names, title))
    return path


def _file_name(name):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_tensorboard(report, logdir, step=0):
    """Scalars (and confusion-matrix images, and the markdown table as text) for TensorBoard in `logdir`.

    Classification: `shift/<set>/accuracy`, `shift/<set>/accuracy_gap`, `shift/<set>/macro_f1`,
    images `confusion/<set>`. Language model: `lm/<source>/perplexity`, `lm/<source>/loss` and
    (causal LMs) `lm/<source>/bits_per_byte`.
    Learning-curve rows: `few_shot/<init>/accuracy` with step = shots per class (all: the
    number of training examples).
    """
    import tensorflow as tf

    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        if isinstance(report, list):
            for row in report:
                shots = row["shots_per_class"] if row["shots_per_class"] != "all" else row["train_examples"]
                tf.summary.scalar(f"few_shot/{row['init']}/accuracy", row["accuracy"], step=int(shots))
                tf.summary.scalar(f"few_shot/{row['init']}/macro_f1", row["macro_f1"], step=int(shots))
        elif report.get("kind") == "language_model":
            for source, m in report["sources"].items():
                tf.summary.scalar(f"lm/{source}/perplexity", m["perplexity"], step=step)
                tf.summary.scalar(f"lm/{source}/loss", m["loss"], step=step)
                if "bits_per_byte" in m:
                    tf.summary.scalar(f"lm/{source}/bits_per_byte", m["bits_per_byte"], step=step)
        else:
            for name, m in report["sets"].items():
                tf.summary.scalar(f"shift/{name}/accuracy", m["accuracy"], step=step)
                tf.summary.scalar(f"shift/{name}/accuracy_gap", m["accuracy_gap"], step=step)
                tf.summary.scalar(f"shift/{name}/macro_f1", m["macro_f1"], step=step)
                png = confusion_png_bytes(m["confusion"], report["label_names"], title=name)
                tf.summary.image(f"confusion/{name}", tf.image.decode_png(png)[None], step=step)
        tf.summary.text("report", markdown_report(report), step=step)
    writer.flush()
    writer.close()
    return logdir


def write_report(report, directory, step=0, tensorboard=True, markdown=None):
    """Writes report.json, report.md (`markdown`, default `markdown_report(report)`),
    confusion_<set>.png (classification) and tb/ into `directory`; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = {
        "json": write_json(report, os.path.join(directory, "report.json")),
        "markdown": write_markdown(report, os.path.join(directory, "report.md"), markdown),
    }
    if isinstance(report, dict) and report.get("kind") == "classification":
        for name, m in report["sets"].items():
            paths[f"confusion_{name}"] = write_confusion_png(
                m["confusion"], report["label_names"], os.path.join(directory, f"confusion_{_file_name(name)}.png"), title=name
            )
    if tensorboard:
        paths["tensorboard"] = write_tensorboard(report, os.path.join(directory, "tb"), step=step)
    return paths
