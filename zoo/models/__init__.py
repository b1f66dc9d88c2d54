"""Backbones (Encoder, Decoder), task models and generation, in `keras.ops` only."""

from zoo.models.causal_lm import CausalLM
from zoo.models.decoder import Decoder
from zoo.models.distillation import DistillationModel
from zoo.models.encoder import Encoder
from zoo.models.generation import generate_tokens, sample_next_token
from zoo.models.lora import enable_lora, merge_lora, trainable_share
from zoo.models.losses import SparseCrossEntropy
from zoo.models.masked_lm import MaskedLM
from zoo.models.metrics import MacroClassificationMetric, Perplexity, SparseAccuracy, classification_metrics
from zoo.models.multitask import MultiTaskModel
from zoo.models.text_classifier import TextClassifier

__all__ = [
    "CausalLM",
    "Decoder",
    "DistillationModel",
    "Encoder",
    "MacroClassificationMetric",
    "MaskedLM",
    "MultiTaskModel",
    "Perplexity",
    "SparseAccuracy",
    "SparseCrossEntropy",
    "TextClassifier",
    "classification_metrics",
    "enable_lora",
    "generate_tokens",
    "merge_lora",
    "sample_next_token",
    "trainable_share",
]
