"""SavedModel export: raw-text signatures equal the Keras models, load without Keras, write atomically.

One tokenizer and one tiny model per recipe (random weights: equality needs no training) are
exported once per session into a shared EXPORT_ROOT (`shared_exports()`, also used by
test_serving.py). Every signature is called in ONE fresh Python process that cannot import
Keras, keras-hub or the project (tests/zoo/load_export_script.py).
"""

import atexit
import functools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import recipes
import zoo
from trainers import export_commands
from zoo import export
from zoo.data import pipelines
from zoo.data.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID, train_tokenizer

SHAPE = dict(vocabulary_size=200, num_layers=1, hidden_dim=32, num_heads=2, intermediate_dim=64, sequence_length=32, dropout=0.0)
LABELS = ["animal", "tool", "plant"]
NEW_TOKENS = 8
TOP_K = 4
SCRIPT = os.path.join(os.path.dirname(__file__), "load_export_script.py")

LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 300)  # ~2,700 tokens, far past 32
AWKWARD = ["", "the cat sat on the mat", "naïve café — 😀🚀 日本語 ÜNÏCÖDÉ", LONG, "   \t\n  "]
AWKWARD_MASKED = [
    "", "[MASK]", "the [MASK] sat on the [MASK]", "x[MASK][MASK]y", "naïve [MASK] 😀 日本語", "[MASK] " + LONG,
    LONG + " [MASK]",  # the mask is cut off with the end of the text: no prediction for it
]
PROMPTS = ["def ", "the cat", "", "naïve café 😀", LONG]


def corpus():
    rng = random.Random(0)
    animals = ["cat", "dog", "horse", "sheep", "goat", "lion", "tiger", "bear", "wolf", "fox"]
    tools = ["hammer", "saw", "drill", "wrench", "chisel", "pliers", "file", "plane", "vise", "mat"]
    verbs = ["sat on", "jumps over", "looks at", "runs to", "sleeps near"]
    lines = [f"the {rng.choice(animals)} {rng.choice(verbs)} the {rng.choice(animals + tools)}" for _ in range(300)]
    lines += ["def read_config(path):\n    return open(path).read()", "import os\nimport sys"] * 20
    return lines


def batch_of(size):
    words = corpus()
    return [f"{words[i % len(words)]} number {i}" for i in range(size)]


@functools.lru_cache(maxsize=None)
def shared_exports():
    """(EXPORT_ROOT, {recipe name: (recipe, model, export dir)}): each recipe exported once as version 1."""
    root = tempfile.mkdtemp(prefix="zoo-exports-")
    atexit.register(shutil.rmtree, root, True)
    # The classifier lowercases (its recipe's default): its export also needs tensorflow_text's
    # normalisation ops.
    tokenizers = {lowercase: train_tokenizer(corpus(), SHAPE["vocabulary_size"], lowercase=lowercase) for lowercase in (False, True)}
    exports = {}
    for name in ("classifier", "bert-mlm", "gpt-clm"):
        extra = {"num_classes": len(LABELS)} if name == "classifier" else {}
        recipe = recipes.get(name, **SHAPE, **extra)
        recipe.tokenizer = tokenizers[recipe.config.lowercase]
        if name == "classifier":
            recipe.label_names = list(LABELS)
        model = recipe.build_model()
        options = {"top_k": TOP_K} if name == "bert-mlm" else {}
        path = recipe.export(model, os.path.join(root, name, "1"), metrics={"accuracy": np.float32(0.25)}, **options)
        exports[name] = (recipe, model, path)
    return root, exports


@pytest.fixture(scope="module")
def exports():
    return shared_exports()[1]


# -- in-process Keras references ----------------------------------------------------------------


def classifier_reference(recipe, model, texts):
    dataset = pipelines.classification_dataset(texts, [0] * len(texts), recipe.preprocessor, 64, shuffle=False).map(
        lambda x, y: x
    )
    logits = model.predict(dataset, verbose=0)
    return {"logits": logits, "label_id": logits.argmax(-1), "label": [LABELS[i] for i in logits.argmax(-1)]}


def masked_token_ids(tokenizer, text):
    ids = []
    for index, piece in enumerate(text.split("[MASK]")):
        if index:
            ids.append(MASK_ID)
        ids += [int(i) for i in keras.ops.convert_to_numpy(tokenizer(piece))]
    return [CLS_ID] + ids[: SHAPE["sequence_length"] - 2] + [SEP_ID]


def pad(rows, value=PAD_ID):
    width = max(1, max(len(row) for row in rows))
    return np.array([row + [value] * (width - len(row)) for row in rows], "int32")


def mlm_reference(recipe, model, texts):
    rows = [masked_token_ids(recipe.tokenizer, text) for text in texts]
    token_ids = pad(rows)
    padding_mask = pad([[1] * len(row) for row in rows], 0)
    positions = [[i for i, t in enumerate(row) if t == MASK_ID] for row in rows]
    mask_positions = pad(positions, 0) if any(positions) else np.zeros((len(rows), 0), "int32")
    logits = keras.ops.convert_to_numpy(
        model({"token_ids": token_ids, "padding_mask": padding_mask.astype(bool), "mask_positions": mask_positions})
    ).astype("float64")
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    best = np.argsort(-probabilities, axis=-1, kind="stable")[..., :TOP_K]
    return {
        "token_ids": token_ids, "padding_mask": padding_mask, "num_masks": [len(p) for p in positions],
        "mask_positions": mask_positions, "best_ids": best, "best_scores": np.take_along_axis(probabilities, best, -1),
    }


def assert_fill_mask_equal(outputs, reference, vocabulary):
    num_masks = np.array(reference["num_masks"])
    np.testing.assert_array_equal(outputs["num_masks"], num_masks)
    ids, scores, tokens = np.array(outputs["token_ids"]), np.array(outputs["scores"]), np.array(outputs["tokens"], object)
    assert ids.shape == (len(num_masks), num_masks.max(initial=0), TOP_K)
    for row, count in enumerate(num_masks):
        np.testing.assert_allclose(scores[row, :count], reference["best_scores"][row, :count], atol=1e-5)
        # Candidates whose scores differ by less than float32 noise may come in either order.
        gaps = np.diff(reference["best_scores"][row, :count], axis=-1)
        distinct = np.ones_like(reference["best_ids"][row, :count], bool)
        distinct[..., 1:] &= np.abs(gaps) > 1e-6
        distinct[..., :-1] &= np.abs(gaps) > 1e-6
        np.testing.assert_array_equal(np.where(distinct, ids[row, :count], -2), np.where(distinct, reference["best_ids"][row, :count], -2))
        assert [[vocabulary[i] for i in slot] for slot in ids[row, :count]] == tokens[row, :count].tolist()
        # Padded slots: no token, id -1, score 0.
        assert (ids[row, count:] == -1).all() and (scores[row, count:] == 0).all() and (tokens[row, count:] == "").all()


# -- one fresh process for every signature ------------------------------------------------------


def _strings(values):
    return {"dtype": "string", "value": list(values)}


def _ints(values):
    return {"dtype": "int32", "value": np.asarray(values).tolist()}


def _generate_inputs(max_new_tokens=NEW_TOKENS):
    return {
        "max_new_tokens": _ints(max_new_tokens), "temperature": {"dtype": "float32", "value": 0.0},
        "top_k": _ints(0), "top_p": {"dtype": "float32", "value": 1.0}, "seed": _ints(0),
    }


@pytest.fixture(scope="module")
def fresh_process(exports, tmp_path_factory):
    """{case: outputs} of every signature called in one child process, and its loaded modules."""
    classifier, mlm, gpt = (exports[name][2] for name in ("classifier", "bert-mlm", "gpt-clm"))
    mlm_reference_awkward = mlm_reference(*exports["bert-mlm"][:2], AWKWARD_MASKED)
    gpt_tokenizer = exports["gpt-clm"][0].tokenizer
    prompt_ids = [[SEP_ID] + [int(i) for i in keras.ops.convert_to_numpy(gpt_tokenizer(p))][-20:] for p in PROMPTS]
    cases = {
        "classify": (classifier, "classify", {"text": _strings(AWKWARD)}),
        "classify_default": (classifier, "serving_default", {"text": _strings(AWKWARD)}),
        "classify_256": (classifier, "classify", {"text": _strings(batch_of(256))}),
        "classify_ids": (classifier, "classify_ids", {
            "token_ids": _ints(pad([[CLS_ID, 10, 11, 12, SEP_ID], [CLS_ID, SEP_ID]])),
            "padding_mask": _ints(pad([[1] * 5, [1] * 2], 0)),
        }),
        "fill_mask": (mlm, "fill_mask", {"text": _strings(AWKWARD_MASKED)}),
        "fill_mask_default": (mlm, "serving_default", {"text": _strings(AWKWARD_MASKED)}),
        "fill_mask_256": (mlm, "fill_mask", {"text": _strings(f"{t} [MASK]" for t in batch_of(256))}),
        "fill_mask_ids": (mlm, "fill_mask_ids", {
            "token_ids": _ints(mlm_reference_awkward["token_ids"]), "padding_mask": _ints(mlm_reference_awkward["padding_mask"]),
        }),
        "generate": (gpt, "generate", {"prompt": _strings(PROMPTS), **_generate_inputs()}),
        "generate_default": (gpt, "serving_default", {"prompt": _strings(PROMPTS), **_generate_inputs()}),
        "generate_256": (gpt, "generate", {"prompt": _strings(batch_of(256)), **_generate_inputs(4)}),
        "generate_ids": (gpt, "generate_ids", {
            "token_ids": _ints(pad(prompt_ids)), "lengths": _ints([len(p) for p in prompt_ids]), **_generate_inputs(),
        }),
    }
    directory = tmp_path_factory.mktemp("fresh_process")
    requests = [{"export_dir": path, "signature": signature, "inputs": inputs} for path, signature, inputs in cases.values()]
    (directory / "requests.json").write_text(json.dumps(requests), encoding="utf-8")
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAS_BACKEND")}
    completed = subprocess.run(
        [sys.executable, SCRIPT, str(directory / "requests.json"), str(directory / "results.json")],
        cwd=str(directory), env=environment, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads((directory / "results.json").read_text(encoding="utf-8"))
    outputs = {
        case: {name: np.array(value["value"], dtype=object if value["dtype"] == "string" else value["dtype"]) for name, value in result.items()}
        for case, result in zip(cases, results["results"])
    }
    return outputs, results["modules"], {"mlm_awkward": mlm_reference_awkward, "prompt_ids": prompt_ids}


def test_fresh_process_needs_no_keras_and_no_project_code(fresh_process):
    _, modules, _ = fresh_process
    top_level = {name.split(".")[0] for name in modules}
    assert "keras" not in modules
    assert not top_level & {"keras", "keras_hub", "keras_nlp", "tf_keras", "zoo", "recipes", "trainers"}
    assert "tensorflow" in top_level


def test_classifier_signatures_equal_keras(exports, fresh_process):
    outputs, _, _ = fresh_process
    recipe, model, _ = exports["classifier"]
    for case, texts in [("classify", AWKWARD), ("classify_default", AWKWARD), ("classify_256", batch_of(256))]:
        reference = classifier_reference(recipe, model, texts)
        result = outputs[case]
        np.testing.assert_allclose(result["logits"], reference["logits"], atol=1e-5)
        np.testing.assert_allclose(result["probabilities"], tf.nn.softmax(reference["logits"]).numpy(), atol=1e-5)
        np.testing.assert_array_equal(result["label_id"], reference["label_id"])
        assert result["label"].tolist() == reference["label"]
        assert result["logits"].shape == (len(texts), len(LABELS))
    # The ids signature is the model on the client's own token ids.
    token_ids = pad([[CLS_ID, 10, 11, 12, SEP_ID], [CLS_ID, SEP_ID]])
    logits = model.predict({"token_ids": token_ids, "padding_mask": pad([[1] * 5, [1] * 2], 0).astype(bool)}, verbose=0)
    np.testing.assert_allclose(outputs["classify_ids"]["logits"], logits, atol=1e-5)


def test_fill_mask_signatures_equal_keras(exports, fresh_process):
    outputs, _, references = fresh_process
    recipe, model, _ = exports["bert-mlm"]
    vocabulary = recipe.tokenizer.get_vocabulary()
    assert references["mlm_awkward"]["num_masks"] == [0, 1, 2, 2, 1, 1, 0]
    for case in ("fill_mask", "fill_mask_default", "fill_mask_ids"):
        assert_fill_mask_equal(outputs[case], references["mlm_awkward"], vocabulary)
    np.testing.assert_array_equal(outputs["fill_mask_ids"]["mask_positions"], references["mlm_awkward"]["mask_positions"])
    assert_fill_mask_equal(outputs["fill_mask_256"], mlm_reference(recipe, model, [f"{t} [MASK]" for t in batch_of(256)]), vocabulary)
    assert "mask_positions" not in outputs["fill_mask"]


def test_generate_signatures_equal_greedy_keras_generation(exports, fresh_process):
    outputs, _, references = fresh_process
    recipe, model, _ = exports["gpt-clm"]
    expected = recipe.generate_text(model, PROMPTS, temperature=0.0, max_new_tokens=NEW_TOKENS)
    assert outputs["generate"]["text"].tolist() == expected
    assert outputs["generate_default"]["text"].tolist() == expected
    assert any(expected), "a random model should say something"
    prompts = batch_of(256)
    assert outputs["generate_256"]["text"].tolist() == recipe.generate_text(model, prompts, temperature=0.0, max_new_tokens=4)
    # generate_ids: the new ids (end token included) of CausalLM.generate, padded with 0.
    new_ids = model.generate(references["prompt_ids"], max_new_tokens=NEW_TOKENS, end_token_id=SEP_ID)
    np.testing.assert_array_equal(outputs["generate_ids"]["lengths"], [len(ids) for ids in new_ids])
    np.testing.assert_array_equal(outputs["generate_ids"]["token_ids"], pad([ids + [0] * (NEW_TOKENS - len(ids)) for ids in new_ids]))


# -- the export directory ------------------------------------------------------------------------


def test_export_layout_and_metadata(exports):
    for name, (recipe, _, path) in exports.items():
        assert os.path.isfile(os.path.join(path, "saved_model.pb")) and os.path.isdir(os.path.join(path, "variables"))
        with open(os.path.join(path, "assets", "vocab.txt"), encoding="utf-8") as f:
            assert f.read().split("\n")[:-1] == list(recipe.tokenizer.get_vocabulary())
        metadata = export.read_metadata(path)
        assert metadata["recipe"] == name
        assert metadata["config"] == json.loads(json.dumps(recipe.config_dict()))
        assert metadata["metrics"] == {"accuracy": 0.25}
        assert metadata["label_names"] == (LABELS if name == "classifier" else None)
        assert metadata["versions"]["zoo"] == zoo.__version__
        assert metadata["versions"]["tensorflow"] == tf.__version__
        assert {"keras", "keras_hub", "tensorflow_text"} <= set(metadata["versions"])
        assert "serving_default" in metadata["signatures"]
    signatures = export.read_metadata(exports["gpt-clm"][2])["signature_defaults"]["generate"]
    assert signatures == {"max_new_tokens": 31, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}
    # Leftover temporary directories would show up as hidden siblings.
    assert sorted(os.listdir(os.path.dirname(exports["classifier"][2]))) == ["1"]


def test_export_refuses_to_overwrite(exports, tmp_path):
    recipe, model, _ = exports["classifier"]
    target = tmp_path / "model" / "1"
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        recipe.export(model, str(target))
    assert os.listdir(target) == ["keep.txt"]
    assert sorted(os.listdir(target.parent)) == ["1"]


def test_export_after_in_process_generation(exports, tmp_path):
    # Training shows sampled text (CausalLM.generate), then exports from the same process: the
    # compiled generate functions the model keeps must not get in the SavedModel's way.
    recipe, model, _ = exports["gpt-clm"]
    model.generate([[SEP_ID, 10]], max_new_tokens=2)
    assert model._generate_functions
    path = recipe.export(model, str(tmp_path / "gpt" / "1"))
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))


def test_generation_compiled_with_xla_in_the_export_gives_the_same_text(exports, tmp_path):
    recipe, model, default_path = exports["gpt-clm"]
    path = recipe.export(model, str(tmp_path / "gpt" / "1"), jit_compile=True)
    assert export.read_metadata(path)["export_options"]["jit_compile"] is True
    assert export.read_metadata(default_path)["export_options"]["jit_compile"] is False
    compiled, default = (tf.saved_model.load(p).signatures["generate"] for p in (path, default_path))
    library = compiled.graph.as_graph_def().library.function
    assert any(f.attr["_XlaMustCompile"].b for f in library), "no XLA-compiled function in the export"
    prompts = tf.constant(PROMPTS[:3])
    greedy = dict(max_new_tokens=tf.constant(NEW_TOKENS), temperature=tf.constant(0.0), top_k=tf.constant(0),
                  top_p=tf.constant(1.0), seed=tf.constant(0))
    text = [t.decode("utf-8") for t in compiled(prompt=prompts, **greedy)["text"].numpy()]
    assert text == recipe.generate_text(model, PROMPTS[:3], temperature=0.0, max_new_tokens=NEW_TOKENS)
    # A seed draws the same noise with and without XLA, in the export and in-process.
    sampled = dict(greedy, temperature=tf.constant(1.0), top_k=tf.constant(20), seed=tf.constant(3))
    text = [t.decode("utf-8") for t in compiled(prompt=prompts, **sampled)["text"].numpy()]
    assert text == [t.decode("utf-8") for t in default(prompt=prompts, **sampled)["text"].numpy()]
    assert text == recipe.generate_text(model, PROMPTS[:3], max_new_tokens=NEW_TOKENS, temperature=1.0, top_k=20, seed=3)


def test_export_errors_name_the_problem(exports, tmp_path):
    recipe, model, _ = exports["classifier"]
    clone = recipe.with_overrides()
    clone.tokenizer = None
    with pytest.raises(ValueError, match="no tokenizer yet"):
        clone.export(model, str(tmp_path / "a"))
    with pytest.raises(ValueError, match="A classifier export has no option 'jit_compile'. Its options: none"):
        recipe.export(model, str(tmp_path / "c"), jit_compile=True)
    mlm_recipe, mlm_model, _ = exports["bert-mlm"]
    with pytest.raises(ValueError, match="A bert-mlm export has no option 'jit_compile'. Its options: top_k: "):
        mlm_recipe.export(mlm_model, str(tmp_path / "d"), jit_compile=True)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        mlm_recipe.export(mlm_model, str(tmp_path / "e"), top_k=0)
    assert os.listdir(tmp_path) == []


def _half_written_save(original):
    def save(obj, export_dir, *args, **kwargs):
        original(obj, export_dir, *args, **kwargs)
        raise KeyboardInterrupt  # the user pressed Ctrl-C just after the graph was written

    return save


def _failing_save_tokenizer(tokenizer, directory):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
        f.write("[PAD]\n")
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("failure", ["saved_model.save", "save_tokenizer"])
def test_interrupted_export_leaves_nothing_behind(exports, tmp_path, monkeypatch, failure):
    recipe, model, _ = exports["gpt-clm"]
    if failure == "saved_model.save":
        monkeypatch.setattr(tf.saved_model, "save", _half_written_save(tf.saved_model.save))
        expected = KeyboardInterrupt
    else:
        import zoo.data.tokenizer

        monkeypatch.setattr(zoo.data.tokenizer, "save_tokenizer", _failing_save_tokenizer)
        expected = OSError
    target = tmp_path / "gpt" / "1"
    with pytest.raises(expected):
        recipe.export(model, str(target))
    assert not target.exists()
    assert os.listdir(tmp_path / "gpt") == []  # no temporary sibling left


def test_generation_settings_are_checked_in_the_graph(exports):
    loaded = tf.saved_model.load(exports["gpt-clm"][2])
    generate = loaded.signatures["generate"]
    settings = dict(temperature=tf.constant(0.0), top_k=tf.constant(0), top_p=tf.constant(1.0), seed=tf.constant(0))
    for bad in (0, SHAPE["sequence_length"]):
        with pytest.raises(tf.errors.InvalidArgumentError, match="max_new_tokens must be"):
            generate(prompt=tf.constant(["def "]), max_new_tokens=tf.constant(bad), **settings)
    # The longest allowed continuation fits beside a prompt cut to one token.
    text = generate(prompt=tf.constant([LONG]), max_new_tokens=tf.constant(SHAPE["sequence_length"] - 1), **settings)["text"]
    assert text.shape == (1,)
    # Sampling is reproducible for a seed and varies with it.
    sampled = dict(temperature=tf.constant(1.0), top_k=tf.constant(0), top_p=tf.constant(1.0))
    prompts = tf.constant(["the cat"] * 12)
    first = generate(prompt=prompts, max_new_tokens=tf.constant(6), seed=tf.constant(1), **sampled)["text"].numpy()
    again = generate(prompt=prompts, max_new_tokens=tf.constant(6), seed=tf.constant(1), **sampled)["text"].numpy()
    other = generate(prompt=prompts, max_new_tokens=tf.constant(6), seed=tf.constant(2), **sampled)["text"].numpy()
    assert first.tolist() == again.tolist() and first.tolist() != other.tolist()
    assert first[0] != first[1] and first[0] != first[8], "rows of a batch, in one sub-batch or not, draw their own noise"


# -- trainers/export_commands ---------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")  # an untrained model's optimizer
def test_export_run_writes_the_next_version(exports, tmp_path, capsys):
    recipe, model, shared_path = exports["classifier"]
    run_dir = tmp_path / "runs" / "classifier-tiny"
    checkpoint = run_dir / "checkpoints" / "best"
    recipe.save(model, str(checkpoint))
    (checkpoint / "metrics.json").write_text(json.dumps({"val_loss": 1.5, "val_accuracy": 0.5}))
    root = tmp_path / "saved_models"
    first = export_commands.export_run(str(run_dir), export_root=str(root))
    assert first == str(root / "classifier-tiny" / "1")
    out, err = capsys.readouterr()
    assert out.strip() == first
    # Status lines on stderr around the export: tracing and writing a SavedModel takes seconds.
    status = [line for line in err.splitlines() if line.startswith("[zoo] ")]
    assert len(status) == 2 and status[0] == f"[zoo] exporting {first} ...", err
    assert status[1].startswith(f"[zoo] exporting {first} ... done in ") and status[1].endswith(" s"), err
    second = export_commands.export_run(str(checkpoint), export_root=str(root))
    assert second == str(root / "classifier-tiny" / "2")
    chosen = export_commands.export_run(str(run_dir), out=str(tmp_path / "elsewhere" / "7"))
    assert chosen == str(tmp_path / "elsewhere" / "7")
    with pytest.raises(FileExistsError):
        export_commands.export_run(str(run_dir), out=chosen)
    metadata = export.read_metadata(second)
    assert metadata["label_names"] == LABELS
    assert metadata["metrics"] == {"val_loss": 1.5, "val_accuracy": 0.5}
    assert metadata["config"] == json.loads(json.dumps(recipe.config_dict()))
    capsys.readouterr()
    # The checkpoint's export classifies exactly as the original export, given the model directory.
    results = export_commands.predict(str(root / "classifier-tiny"), AWKWARD)
    expected = tf.saved_model.load(shared_path).signatures["classify"](text=tf.constant(AWKWARD))
    assert [r["label"] for r in results] == [b.decode() for b in expected["label"].numpy()]
    np.testing.assert_allclose([list(r["probabilities"].values()) for r in results], expected["probabilities"], atol=1e-5)
    assert list(results[0]["probabilities"]) == LABELS
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == results


def test_fill_mask_and_generate_commands(exports, capsys):
    mlm_path, gpt_path = exports["bert-mlm"][2], exports["gpt-clm"][2]
    results = export_commands.fill_mask(mlm_path, ["the [MASK] sat on the [MASK]", "no mask"])
    assert [len(r["masks"]) for r in results] == [2, 0]
    assert all(len(candidates) == TOP_K for candidates in results[0]["masks"])
    scores = [c["score"] for c in results[0]["masks"][0]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == results

    recipe, model, _ = exports["gpt-clm"]
    continuation = export_commands.generate(gpt_path, "def ", max_new_tokens=6, temperature=0.0, top_k=0, top_p=1.0, seed=0)
    assert continuation == recipe.generate_text(model, ["def "], temperature=0.0, max_new_tokens=6)[0]
    assert capsys.readouterr().out == "def " + continuation + "\n"
    # Unset settings come from the export's defaults (greedy, up to sequence_length - 1 tokens here).
    assert export_commands.generate(gpt_path, ["def "]) == recipe.generate_text(model, ["def "], temperature=0.0, max_new_tokens=31)
    with pytest.raises(ValueError, match="has no .generate. signature"):
        export_commands.generate(mlm_path, "def ")


def test_encoder_exports_offer_a_sentence_embedding(exports):
    """`embed` = the encoder's outputs mean-pooled over real tokens and L2-normalised."""
    from zoo.converters.hf_bert import sentence_embedding

    texts = ["the cat sat", "", "a much longer sentence about dogs and cats and birds"]
    for name in ("classifier", "bert-mlm"):
        recipe, model, path = exports[name]
        embedded = tf.saved_model.load(path).signatures["embed"](text=tf.constant(texts))["embedding"].numpy()
        batch = next(iter(pipelines.classification_dataset(texts, [0] * len(texts), recipe.preprocessor, len(texts), shuffle=False)))[0]
        reference = sentence_embedding(model.encoder, batch["token_ids"], batch["padding_mask"])
        np.testing.assert_allclose(embedded, np.asarray(reference), atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(embedded, axis=-1), 1.0, atol=1e-5)


def test_training_pipeline_preprocessor_and_export_give_the_same_ids(exports):
    """Text reaches the model only through `recipe.preprocessor`: the training pipeline, the
    layer itself and the exported `tokenize` signature give identical ids, texts far longer
    than the sequence length included."""
    texts = corpus()[:60] + [text for text in AWKWARD if text.strip()] + [LONG[:500] + " end", "x" * 3000]
    T = SHAPE["sequence_length"]

    def rows(token_ids, padding_mask):
        return [list(ids[: int(np.sum(mask))]) for ids, mask in zip(np.asarray(token_ids), np.asarray(padding_mask))]

    for name in ("classifier", "bert-mlm"):
        recipe, _, path = exports[name]
        preprocessor = recipe.preprocessor
        assert preprocessor.sequence_length == T and preprocessor.describe()["sequence_length"] == T
        if name == "classifier":
            training = []
            for x, _ in pipelines.classification_dataset(texts, [0] * len(texts), preprocessor, 16, shuffle=False):
                training += rows(x["token_ids"], x["padding_mask"])
        layer_rows = rows(*preprocessor.pack(preprocessor.tokenize(texts)))
        if name == "classifier":
            called = preprocessor(texts)  # the layer's call: the same packing, padded to sequence_length
            assert called["token_ids"].shape == (len(texts), T)
            assert rows(called["token_ids"], called["padding_mask"]) == layer_rows
        exported = tf.saved_model.load(path).signatures["tokenize"](text=tf.constant(texts))
        export_rows = rows(exported["token_ids"], exported["padding_mask"])
        assert export_rows == layer_rows
        if name == "classifier":
            assert training == layer_rows
        assert max(len(row) for row in layer_rows) == T  # the long texts were cut to what training saw
        for text, row in zip(texts, layer_rows):
            assert row == [CLS_ID] + np.asarray(recipe.tokenizer(text)).tolist()[: T - 2] + [SEP_ID]

    # Both LMs train on one stream of documents, each ended by [SEP]: the pipelines' blocks, the
    # layer's document_ids and the exported `tokenize` (gpt-clm) spell the same stream.
    recipe, _, path = exports["gpt-clm"]
    preprocessor = recipe.preprocessor
    stream = [token for ids in preprocessor.document_ids(texts).to_list() for token in ids]
    exported = tf.saved_model.load(path).signatures["tokenize"](text=tf.constant(texts))
    export_stream = [
        token for ids, length in zip(exported["token_ids"].numpy(), exported["lengths"].numpy()) for token in ids[:length]
    ]
    assert export_stream == stream
    blocks = []
    for token_ids, labels in pipelines.causal_lm_dataset(texts, preprocessor, 4, shuffle=False):
        blocks += np.concatenate([token_ids, labels[:, -1:]], axis=1).reshape(-1).tolist()
    assert len(blocks) > len(stream) - 4 * (T + 1) and blocks == stream[: len(blocks)]
    mlm_recipe, _, _ = exports["bert-mlm"]
    mlm_stream = [token for ids in mlm_recipe.preprocessor.document_ids(texts).to_list() for token in ids]
    assert mlm_stream == stream  # same tokenizer, same stream
    chunks = []
    for x, y, weights in pipelines.masked_lm_dataset(texts, mlm_recipe.preprocessor, 4, shuffle=False):
        original = x["token_ids"].numpy().copy()
        for row in range(len(original)):
            real = weights[row].numpy() > 0
            original[row, x["mask_positions"][row].numpy()[real]] = y[row].numpy()[real]
        assert (original[:, 0] == CLS_ID).all() and (original[:, -1] == SEP_ID).all()
        chunks += original[:, 1:-1].reshape(-1).tolist()
    assert len(chunks) > len(stream) - 4 * (T - 2) and chunks == stream[: len(chunks)]
    # `detokenize` is the layer's detokenize.
    detokenized = tf.saved_model.load(path).signatures["detokenize"](
        token_ids=exported["token_ids"], lengths=exported["lengths"] - 1
    )["text"].numpy().tolist()
    assert detokenized == preprocessor.detokenize(preprocessor.tokenize(texts)).numpy().tolist()


def test_export_metadata_records_the_preprocessor(exports):
    for name, kind in (("classifier", "EncoderPreprocessor"), ("bert-mlm", "MaskedLMPreprocessor"), ("gpt-clm", "CausalLMPreprocessor")):
        recipe, _, path = exports[name]
        described = export.read_metadata(path)["preprocessor"]
        assert described["class"] == kind
        assert described["sequence_length"] == SHAPE["sequence_length"]
        assert described["truncation"] and described["special_token_ids"]["[SEP]"] == SEP_ID


# -- ids-only exports (stock TF Serving) and warm-up requests --------------------------------------

IDS_ONLY_SCRIPT = """
import json, sys
sys.modules["tensorflow_text"] = None  # the stock TF Serving image has no tensorflow_text ops
import numpy as np
import tensorflow as tf
calls = json.loads(sys.argv[1])
results = {}
for name, (path, signature, inputs) in calls.items():
    function = tf.saved_model.load(path).signatures[signature]
    outputs = function(**{k: tf.constant(np.asarray(v["value"], dtype=v["dtype"])) for k, v in inputs.items()})
    results[name] = {k: v.numpy().tolist() for k, v in outputs.items() if v.dtype != tf.string}
print(json.dumps(results))
"""


IDS_SIGNATURES = {"classifier": "classify_ids", "bert-mlm": "fill_mask_ids", "gpt-clm": "generate_ids"}


@pytest.fixture(scope="module")
def ids_exports(exports, tmp_path_factory):
    """{recipe name: its ids-only export (`zoo export --format ids`)}, of the same models as `exports`."""
    root = tmp_path_factory.mktemp("ids-exports")
    paths = {}
    for name in IDS_SIGNATURES:
        recipe, model, _ = exports[name]
        options = {"top_k": TOP_K} if name == "bert-mlm" else {}
        paths[name] = recipe.export(model, str(root / name / "1"), ids_only=True, **options)
    return paths


def test_ids_only_exports_load_and_run_without_tensorflow_text(exports, ids_exports):
    token_ids = [[CLS_ID, 7, 9, MASK_ID, SEP_ID], [CLS_ID, 8, SEP_ID, PAD_ID, PAD_ID]]
    padding_mask = [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    settings = {"max_new_tokens": NEW_TOKENS, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}
    ids = {"token_ids": {"value": token_ids, "dtype": "int32"}, "padding_mask": {"value": padding_mask, "dtype": "int32"}}
    prompts = {"token_ids": {"value": [[SEP_ID, 10, 11], [SEP_ID, 12, PAD_ID]], "dtype": "int32"},
               "lengths": {"value": [3, 2], "dtype": "int32"},
               **{k: {"value": v, "dtype": "float32" if isinstance(v, float) else "int32"} for k, v in settings.items()}}
    calls, expected = {}, {}
    for name, signature, inputs in [("classifier", "classify_ids", ids), ("bert-mlm", "fill_mask_ids", ids),
                                    ("gpt-clm", "generate_ids", prompts)]:
        full_path, path = exports[name][2], ids_exports[name]
        metadata = export.read_metadata(path)
        assert metadata["ids_only"] is True
        assert set(metadata["signatures"]) == {signature, "serving_default"}
        assert metadata["signatures"]["serving_default"] == metadata["signatures"][signature]
        assert os.path.isfile(os.path.join(path, "assets", "tokenizer.json"))  # for the clients' tokenizers
        calls[name] = (path, signature, inputs)
        full = tf.saved_model.load(full_path).signatures[signature]
        outputs = full(**{k: tf.constant(np.asarray(v["value"], dtype=v["dtype"])) for k, v in inputs.items()})
        expected[name] = {k: v.numpy().tolist() for k, v in outputs.items() if v.dtype != tf.string}
        calls[name + "/default"] = (path, "serving_default", inputs)
        expected[name + "/default"] = expected[name]
    run = subprocess.run([sys.executable, "-c", IDS_ONLY_SCRIPT, json.dumps(calls)], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    for name in expected:
        for key, value in expected[name].items():
            np.testing.assert_allclose(np.asarray(results[name][key], np.float64), np.asarray(value, np.float64), atol=1e-5,
                                       err_msg=f"{name}: {key}")
    # The full exports, by contrast, need tensorflow_text: the same loader fails on them.
    path = exports["classifier"][2]
    blocked = subprocess.run([sys.executable, "-c", IDS_ONLY_SCRIPT, json.dumps({"c": (path, "classify_ids", ids)})],
                             capture_output=True, text=True, timeout=600)
    assert blocked.returncode != 0 and "Op type not registered" in blocked.stderr


def test_warmup_requests_cover_every_signature_and_run(exports):
    from tensorflow_serving.apis import prediction_log_pb2

    for name, (recipe, model, path) in exports.items():
        loaded = tf.saved_model.load(path)
        records = list(tf.data.TFRecordDataset(os.path.join(path, export.WARMUP_FILE)).as_numpy_iterator())
        requests = [prediction_log_pb2.PredictionLog.FromString(record).predict_log.request for record in records]
        assert sorted(r.model_spec.signature_name for r in requests) == sorted(set(loaded.signatures) - {"serving_default"})
        assert all(r.model_spec.name == name for r in requests)
        for request in requests:  # each replays as TF Serving would at load time
            inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
            outputs = loaded.signatures[request.model_spec.signature_name](**{k: tf.constant(v) for k, v in inputs.items()})
            assert outputs, request.model_spec.signature_name


def test_ids_only_exports_carry_warmup_requests_that_run(exports, ids_exports):
    """The stock TF Serving image replays `assets.extra/tf_serving_warmup_requests` when it loads an
    ids-only export: one request per `*_ids` signature, whose outputs are the raw-text export's."""
    from tensorflow_serving.apis import prediction_log_pb2

    for name, path in ids_exports.items():
        loaded, full = tf.saved_model.load(path), tf.saved_model.load(exports[name][2])
        records = list(tf.data.TFRecordDataset(os.path.join(path, export.WARMUP_FILE)).as_numpy_iterator())
        requests = [prediction_log_pb2.PredictionLog.FromString(record).predict_log.request for record in records]
        assert [r.model_spec.signature_name for r in requests] == [IDS_SIGNATURES[name]]
        assert set(loaded.signatures) - {"serving_default"} == {IDS_SIGNATURES[name]}
        assert all(r.model_spec.name == name for r in requests)
        for request in requests:  # each replays as TF Serving would at load time
            signature = request.model_spec.signature_name
            inputs = {key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()}
            assert inputs["token_ids"].dtype == tf.int32  # ids in: no text for a tokenizer the graph lacks
            outputs, expected = loaded.signatures[signature](**inputs), full.signatures[signature](**inputs)
            assert set(outputs) == set(expected)
            for key, value in expected.items():
                if value.dtype == tf.string:  # a classifier's label
                    np.testing.assert_array_equal(outputs[key].numpy(), value.numpy(), err_msg=f"{name}: {key}")
                else:
                    np.testing.assert_allclose(outputs[key].numpy(), value.numpy(), atol=1e-5, err_msg=f"{name}: {key}")
