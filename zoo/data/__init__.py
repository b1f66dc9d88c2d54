"""Data layer: local corpora, tokenizers, preprocessors (text to model ids) and tf.data pipelines.

Names are loaded lazily: `from zoo.data import causal_lm_dataset` imports its module (and
TensorFlow's text ops) only when asked for. (Importing any `zoo` module imports Keras first:
see `zoo/__init__.py`.)
"""

import importlib

_EXPORTS = {
    "MissingCorpusError": "errors",
    "DataFormatError": "errors",
    "LM_SOURCES": "corpora",
    "CLASSIFICATION_SOURCES": "corpora",
    "SPLITS": "corpora",
    "LabelledExamples": "corpora",
    "text_documents": "corpora",
    "labelled_examples": "corpora",
    "document_keys": "corpora",
    "SPECIAL_TOKENS": "tokenizer",
    "train_tokenizer": "tokenizer",
    "save_tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "default_cache_dir": "tokenizer",
    "causal_lm_dataset": "pipelines",
    "masked_lm_dataset": "pipelines",
    "classification_dataset": "pipelines",
    "EncoderPreprocessor": "preprocessing",
    "MaskedLMPreprocessor": "preprocessing",
    "CausalLMPreprocessor": "preprocessing",
    "save_preprocessor": "preprocessing",
    "load_preprocessor": "preprocessing",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zoo.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"zoo.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
