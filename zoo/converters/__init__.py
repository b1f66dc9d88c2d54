"""Formats other tools read: the Hugging Face layout and ONNX.

- `zoo.converters.hf_export`: decoders as `GPT2LMHeadModel`, encoders as `BertModel` /
  `BertForMaskedLM` (a classifier: `BertModel` plus sentence-transformers head modules), and
  the imports back (`import_gpt2`, `import_bert_classifier`; `zoo.converters.hf_bert` for BERT).
- `zoo.converters.hf_tokenizer`: the zoo's tokenizers as `tokenizer.json` and friends, and back.
- `zoo.converters.onnx_export`: ids -> logits through Keras' ONNX export, with the tokenizer files.

`zoo export RUN --format hf|onnx` reaches them through the task interface (`Task.export_hf`,
`Task.onnx_model`, zoo/tasks.py).
"""
