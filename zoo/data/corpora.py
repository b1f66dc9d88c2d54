"""Local text corpora for language modelling and classification, split deterministically.

Every corpus is read from this machine; nothing is downloaded. Built-in sources:

| name | task | documents / examples | install |
|---|---|---|---|
| `stdlib` | LM | one `.py` file of the Python standard library (tests excluded) | always present |
| `python-docs` | LM | one reST source file of the Python docs | `apt-get install python3.11-doc` |
| `fortunes` | LM, classification | one quotation; label = its category file | `apt-get install fortunes fortunes-min` |
| `wordnet` | classification | one synset gloss; label = its lexicographer file | `apt-get install wordnet-base` |

A source may also be a path. For language modelling: a directory (every non-hidden text file
below it is a document), a glob (each match is a document), a single text file (its
blank-line-separated paragraphs are the documents), or a `.csv`/`.jsonl` file (its `text`
column/field). For classification: a `.csv` with a header holding `text` and `label` columns,
or a `.jsonl` file of `{"text": ..., "label": ...}` objects.

Splits are a pure function of each document's key (relative path, synset offset, text), hashed
with MD5 rather than Python's per-process randomised `hash()`, so every process and machine agrees
on them and no document is in two splits. LM sources go 90/5/5 by hash threshold, so adding a file
never moves another one. Classification sources go 80/10/10 by hash rank inside each class
(stratified, exact proportions). Within a split, documents come in hash order too: the first N are
a representative sample of the corpus, which is what `max_documents` relies on.
"""

import csv
import dataclasses
import errno
import glob
import hashlib
import json
import os
import re
import sys
import sysconfig

from zoo.data.errors import DataFormatError
from zoo.data.errors import MissingCorpusError

LM_SOURCES = ("stdlib", "python-docs", "fortunes")
CLASSIFICATION_SOURCES = ("wordnet", "fortunes")
SPLITS = ("train", "validation", "test")
LM_SPLIT_FRACTIONS = (0.90, 0.05, 0.05)
CLASSIFICATION_SPLIT_FRACTIONS = (0.80, 0.10, 0.10)

# Roots of the built-in corpora. Module attributes so tests (and unusual installs) can point
# them elsewhere; every function reads them at call time.
STDLIB_DIR = sysconfig.get_paths()["stdlib"]
_PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
PYTHON_DOCS_DIR = f"/usr/share/doc/python{_PYTHON_VERSION}/html/_sources"
FORTUNES_DIR = "/usr/share/games/fortunes"
WORDNET_DIR = "/usr/share/wordnet"

INSTALL_COMMANDS = {
    "python-docs": f"sudo apt-get install python{_PYTHON_VERSION}-doc",
    "fortunes": "sudo apt-get install fortunes fortunes-min",
    "wordnet": "sudo apt-get install wordnet-base",
}

# Directories of the standard library that hold tests or third-party code, not the library.
STDLIB_EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
)

# The WordNet lexicographer files, indexed by the `lex_filenum` field of data.* lines
# (WordNet 3.0 `lexnames`). Read from `<WORDNET_DIR>/lexnames` instead when that file exists.
WORDNET_LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition",
    "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon",
    "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body",
    "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
)  # fmt: skip
DEFAULT_WORDNET_CATEGORIES = ("noun.animal", "noun.plant", "noun.food", "noun.artifact")
DEFAULT_WORDNET_EXAMPLES_PER_CLASS = 2000
_WORDNET_DATA_FILES = {"noun": "data.noun", "verb": "data.verb", "adj": "data.adj", "adv": "data.adv"}

_GLOB_MAGIC = re.compile(r"[*?[]")
_CLASSIFICATION_SUFFIXES = (".csv", ".jsonl")


@dataclasses.dataclass
class LabelledExamples:
    """Texts with integer labels; `labels[i]` indexes `label_names` (sorted, split-independent)."""

    texts: list
    labels: list
    label_names: list

    def __len__(self):
        return len(self.texts)

    @property
    def num_classes(self):
        return len(self.label_names)


# ----------------------------------------------------------------------------- public API


def text_documents(source, split="train", max_documents=None):
    """Returns the documents of one split of a language-modelling source.

    Args:
        source: one of `LM_SOURCES`, or a path (directory, glob, text file, .csv/.jsonl).
        split: `"train"`, `"validation"` or `"test"` (90/5/5 by a stable hash of the key).
        max_documents: keep only the first N documents of the split's deterministic order
            (hash order, so a prefix is a representative sample). Only those are read.

    Returns:
        A list of non-empty document strings, in the same order on every call.
    """
    _check_split(split)
    if max_documents is not None and max_documents < 0:
        raise ValueError(f"max_documents must be >= 0 or None, got {max_documents}.")
    entries = _split_entries(_lm_entries(source), split)
    documents = []
    for _, read in entries:
        if max_documents is not None and len(documents) >= max_documents:
            break
        text = read()
        # Empty files (many `__init__.py`) and binary files carry nothing to learn.
        if text.strip() and "\x00" not in text:
            documents.append(text)
    return documents


def document_keys(source, split="train"):
    """Returns the keys (relative paths for file sources) of one split, in document order.

    Keys of empty or binary files are included even though `text_documents` skips them.
    """
    _check_split(split)
    return [key for key, _ in _split_entries(_lm_entries(source), split)]


def labelled_examples(source, split="train", categories=None, examples_per_class=None):
    """Returns one split of a classification source as `LabelledExamples`.

    Args:
        source: `"wordnet"`, `"fortunes"`, or a `.csv` / `.jsonl` path with `text` and `label`.
        split: `"train"`, `"validation"` or `"test"`: 80/10/10 inside every class, by the
            rank of a stable hash of each example's key.
        categories: label names to keep. WordNet defaults to `DEFAULT_WORDNET_CATEGORIES`;
            other sources default to every label present.
        examples_per_class: cap per class before splitting, chosen by hash rank (so balanced
            and deterministic). WordNet defaults to 2000; other sources are uncapped.

    Returns:
        `LabelledExamples` whose `label_names` are the sorted categories, identical for
        every split of the same source and arguments, so label ids agree across splits.
        Examples are in hash order, which interleaves the classes.
    """
    _check_split(split)
    if examples_per_class is not None and examples_per_class < 1:
        raise ValueError(f"examples_per_class must be >= 1 or None, got {examples_per_class}.")
    kind, where = _resolve(source, CLASSIFICATION_SOURCES, LM_SOURCES)
    if kind == "builtin" and where == "wordnet":
        if examples_per_class is None:
            examples_per_class = DEFAULT_WORDNET_EXAMPLES_PER_CLASS
        by_class = _wordnet_examples(categories or DEFAULT_WORDNET_CATEGORIES)
    elif kind == "builtin" and where == "fortunes":
        by_class = _select_categories(_fortune_records(), categories, "fortunes")
    else:
        if kind != "file" or not where.endswith(_CLASSIFICATION_SUFFIXES):
            raise ValueError(
                f"A classification source must be one of {CLASSIFICATION_SOURCES} or a .csv "
                f"or .jsonl file with 'text' and 'label', got {source!r}."
            )
        by_class = {}
        for _, text, label in _read_records(where, require_label=True):
            by_class.setdefault(label, []).append(text)
        by_class = _select_categories(by_class, categories, where)
    return _stratified_split(by_class, split, examples_per_class)


# ----------------------------------------------------------------------------- splitting


def stable_hash(key):
    """Maps a string to a float in [0, 1), identically in every process (unlike `hash()`)."""
    digest = hashlib.md5(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(key, fractions=LM_SPLIT_FRACTIONS):
    """Returns the split a key belongs to under threshold splitting with `fractions`."""
    value = stable_hash(key)
    if value < fractions[0]:
        return "train"
    if value < fractions[0] + fractions[1]:
        return "validation"
    return "test"


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}.")


def _split_entries(entries, split):
    """Keeps the entries (key, reader) of `split`, sorted by (hash, key)."""
    chosen = [(stable_hash(key), key, read) for key, read in entries]
    chosen = [item for item in chosen if split_of(item[1]) == split]
    chosen.sort(key=lambda item: (item[0], item[1]))
    return [(key, read) for _, key, read in chosen]


def _stratified_split(by_class, split, examples_per_class):
    """Caps, dedups and splits every class by hash rank; returns the split's examples."""
    label_names = _sorted_labels(by_class)
    # A text listed under two classes has no single right answer: drop it everywhere.
    owners = {}
    for label, texts in by_class.items():
        for text in set(texts):
            owners[text] = owners.get(text, 0) + 1
    start_fraction = {"train": 0.0, "validation": CLASSIFICATION_SPLIT_FRACTIONS[0]}
    start_fraction["test"] = start_fraction["validation"] + CLASSIFICATION_SPLIT_FRACTIONS[1]
    end_fraction = {"train": start_fraction["validation"], "validation": start_fraction["test"]}
    end_fraction["test"] = 1.0
    selected = []
    for label_id, label in enumerate(label_names):
        unique = sorted({t for t in by_class[label] if owners[t] == 1})
        ranked = sorted(unique, key=lambda text: (stable_hash(text), text))
        if examples_per_class is not None:
            ranked = ranked[:examples_per_class]
        count = len(ranked)
        begin = int(count * start_fraction[split] + 0.5)
        end = int(count * end_fraction[split] + 0.5)
        selected.extend((stable_hash(text), text, label_id) for text in ranked[begin:end])
    selected.sort()
    return LabelledExamples(
        texts=[text for _, text, _ in selected],
        labels=[label_id for _, _, label_id in selected],
        label_names=label_names,
    )


def _sorted_labels(by_class):
    """Sorts label names; all-integer names sort numerically so "10" comes after "9"."""
    names = list(by_class)
    if names and all(re.fullmatch(r"-?\d+", name) for name in names):
        return sorted(names, key=int)
    return sorted(names)


def _select_categories(by_class, categories, source):
    if categories is None:
        return by_class
    unknown = [c for c in categories if c not in by_class]
    if unknown:
        raise ValueError(
            f"Unknown categories {unknown} for {source}; valid categories are: "
            f"{', '.join(_sorted_labels(by_class))}."
        )
    return {c: by_class[c] for c in categories}


# ----------------------------------------------------------------------------- sources


def _resolve(source, valid, other):
    """Classifies `source` as ("builtin", name), ("dir"|"file"|"glob", path)."""
    if source in valid:
        return "builtin", source
    if source in other:
        raise ValueError(
            f"{source!r} cannot be used here; valid built-in sources for this task are "
            f"{', '.join(valid)} (or a path)."
        )
    path = os.path.expanduser(os.fspath(source))
    if os.path.isdir(path):
        return "dir", path
    if os.path.isfile(path):
        return "file", path
    if _GLOB_MAGIC.search(path):
        return "glob", path
    if os.sep in path or "/" in path or path.startswith((".", "~")) or os.path.splitext(path)[1]:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory (data source)", source)
    raise ValueError(
        f"Unknown data source {source!r}: expected one of {', '.join(valid)}, or the path "
        f"of an existing file, directory or glob."
    )


def _file_reader(path):
    def read():
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read()

    return read


def _constant(text):
    return lambda: text


def _lm_entries(source):
    """Lists (key, reader) pairs of an LM source without reading the files."""
    kind, where = _resolve(source, LM_SOURCES, CLASSIFICATION_SOURCES)
    if kind == "builtin" and where == "stdlib":
        return _stdlib_entries()
    if kind == "builtin" and where == "python-docs":
        root = PYTHON_DOCS_DIR
        if not os.path.isdir(root):
            raise MissingCorpusError("python-docs", root, INSTALL_COMMANDS["python-docs"])
        paths = glob.glob(os.path.join(root, "**", "*.txt"), recursive=True)
        return [(os.path.relpath(p, root), _file_reader(p)) for p in sorted(paths)]
    if kind == "builtin" and where == "fortunes":
        texts = {}
        for records in _fortune_records().values():
            for text in records:
                texts.setdefault(text, None)  # exact duplicates would leak across splits
        return [(text, _constant(text)) for text in texts]
    if kind == "dir":
        return [(os.path.relpath(p, where), _file_reader(p)) for p in _walk_files(where)]
    if kind == "glob":
        paths = sorted(p for p in glob.glob(where, recursive=True) if os.path.isfile(p))
        if not paths:
            raise FileNotFoundError(errno.ENOENT, "No file matches the glob", source)
        base = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
        return [(os.path.relpath(p, base), _file_reader(p)) for p in paths]
    # A single file: a table gives its text column, plain text its paragraphs.
    if where.endswith(_CLASSIFICATION_SUFFIXES):
        texts = [text for _, text, _ in _read_records(where, require_label=False)]
    else:
        texts = re.split(r"\n[ \t]*\n", _file_reader(where)())
        texts = [text.strip("\n") for text in texts]
    unique = {}
    for text in texts:
        if text.strip():
            unique.setdefault(text, None)
    return [(text, _constant(text)) for text in unique]


def _walk_files(root):
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = os.path.join(directory, name)
            if not name.startswith(".") and os.path.isfile(path):
                yield path


def _stdlib_entries():
    root = STDLIB_DIR
    entries = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_EXCLUDED_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                entries.append((os.path.relpath(path, root), _file_reader(path)))
    return entries


def _fortune_records():
    """Reads every fortune category file into {category: [quotation, ...]}."""
    root = FORTUNES_DIR
    names = []
    if os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name)
            if (
                name.startswith(".")
                or name.endswith((".dat", ".u8"))
                or os.path.islink(path)
                or not os.path.isfile(path)
            ):
                continue
            names.append(name)
    if not names:
        raise MissingCorpusError("fortunes", root, INSTALL_COMMANDS["fortunes"])
    by_category = {}
    for name in names:
        text = _file_reader(os.path.join(root, name))()
        records = re.split(r"^%[ \t]*$", text, flags=re.MULTILINE)
        # rstrip keeps the indentation of verse and attribution lines.
        records = [record.strip("\n").rstrip() for record in records]
        by_category[name] = [record for record in records if record.strip()]
    return by_category


def wordnet_lexnames():
    """Returns the lexicographer file names indexed by `lex_filenum`."""
    path = os.path.join(WORDNET_DIR, "lexnames")
    if os.path.isfile(path):
        names = {}
        with open(path, encoding="utf-8") as file:
            for line in file:
                fields = line.split()
                if len(fields) >= 2:
                    names[int(fields[0])] = fields[1]
        return tuple(names[i] for i in sorted(names))
    return WORDNET_LEXNAMES


def _wordnet_examples(categories):
    """Reads the glosses of the requested lexicographer categories: {category: [gloss]}."""
    lexnames = wordnet_lexnames()
    categories = list(categories)
    unknown = [c for c in categories if c not in lexnames]
    if unknown:
        raise ValueError(
            f"Unknown WordNet categories {unknown}; valid categories are: {', '.join(lexnames)}."
        )
    if len(set(categories)) != len(categories):
        raise ValueError(f"WordNet categories must be distinct, got {categories}.")
    wanted = {lexnames.index(c): c for c in categories}
    by_class = {c: [] for c in categories}
    for part_of_speech in sorted({c.split(".")[0] for c in categories}):
        path = os.path.join(WORDNET_DIR, _WORDNET_DATA_FILES[part_of_speech])
        if not os.path.isfile(path):
            raise MissingCorpusError("wordnet", path, INSTALL_COMMANDS["wordnet"])
        with open(path, encoding="utf-8", errors="replace") as file:
            for line in file:
                if line.startswith("  ") or " | " not in line:
                    continue  # the license header
                fields = line.split(" ", 2)
                category = wanted.get(int(fields[1]))
                if category is not None:
                    by_class[category].append(line.split(" | ", 1)[1].strip())
    return by_class


# ----------------------------------------------------------------------------- user tables


def _read_records(path, require_label):
    """Yields (line, text, label) from a .csv or .jsonl file, validating every row."""
    if path.endswith(".csv"):
        yield from _read_csv(path, require_label)
    else:
        yield from _read_jsonl(path, require_label)


def _expected_columns(require_label):
    return "text,label" if require_label else "text"


def _read_csv(path, require_label):
    # utf-8-sig: spreadsheet exports start with a byte-order mark that would hide "text".
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as file:
        reader = csv.DictReader(file)
        header = reader.fieldnames or []
        needed = ["text", "label"] if require_label else ["text"]
        if any(column not in header for column in needed):
            raise DataFormatError(
                path, 1, f"expected columns {_expected_columns(require_label)}, got {','.join(header)}"
            )
        for row in reader:
            line = reader.line_num
            if None in row:
                raise DataFormatError(path, line, f"more fields than the {len(header)} columns")
            text, label = row["text"], row.get("label")
            if text is None or (require_label and label is None):
                raise DataFormatError(
                    path, line, f"expected columns {_expected_columns(require_label)}, got a short row"
                )
            if require_label and not label.strip():
                raise DataFormatError(path, line, "empty label")
            yield line, text, (label.strip() if label is not None else None)


def _read_jsonl(path, require_label):
    with open(path, encoding="utf-8", errors="replace") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataFormatError(path, line_number, f"invalid JSON: {error.msg}") from None
            if not isinstance(record, dict):
                raise DataFormatError(
                    path, line_number, f"expected a JSON object, got {type(record).__name__}"
                )
            needed = ["text", "label"] if require_label else ["text"]
            missing = [key for key in needed if key not in record]
            if missing:
                raise DataFormatError(
                    path,
                    line_number,
                    f"expected keys {_expected_columns(require_label)}, got {','.join(record)}",
                )
            text, label = record["text"], record.get("label")
            if not isinstance(text, str):
                raise DataFormatError(
                    path, line_number, f"'text' must be a string, got {type(text).__name__}"
                )
            if require_label:
                if label is None or isinstance(label, (dict, list)) or not str(label).strip():
                    raise DataFormatError(path, line_number, f"empty or invalid label {label!r}")
                label = str(label).strip()
            yield line_number, text, label
