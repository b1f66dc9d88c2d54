"""A checkpoint loads with `import zoo` and Keras alone: no recipes, no trainers (issue: Tasks)."""

import os
import subprocess
import sys

import pytest

import recipes
from zoo.data.tokenizer import train_tokenizer

SHAPE = dict(vocabulary_size=120, num_layers=1, hidden_dim=16, num_heads=2, intermediate_dim=32, sequence_length=16)
SCRIPT = """
import sys
import keras
import zoo
import numpy as np
for path in sys.argv[1:]:
    model = keras.models.load_model(path)
    ids = np.full((2, 16), 7, "int32")
    inputs = ids if type(model).__name__ == "CausalLM" else {"token_ids": ids, "padding_mask": np.ones((2, 16), bool)}
    if type(model).__name__ in ("MaskedLM", "MultiTaskModel"):
        inputs["mask_positions"] = np.ones((2, 2), "int32")
    if type(model).__name__ == "MultiTaskModel":
        inputs["clean_token_ids"] = ids
    model(inputs)
    if getattr(model, "optimizer", None) is None:  # saved uncompiled
        print(type(model).__name__, "-", "-")
        continue
    schedule = model.optimizer.get_config()["learning_rate"]  # the schedule's config, deserialised
    print(type(model).__name__, type(model.optimizer).__name__, schedule["class_name"])
leaked = sorted({name.split(".")[0] for name in sys.modules} & {"recipes", "trainers"})
print("leaked:", leaked)
"""


@pytest.mark.slow
def test_checkpoints_load_in_a_process_that_imports_only_zoo_and_keras(tmp_path):
    tokenizer = train_tokenizer(["the cat sat on the mat", "a dog ran", "def f(x): return x"] * 20, 120)
    paths = []
    for name in ("gpt-clm", "bert-mlm", "classifier", "multitask", "distill"):
        extra = {"num_classes": 2} if name in ("classifier", "multitask") else {}
        if name == "distill":  # a student of the classifier saved above
            extra = {"teacher": str(tmp_path / "classifier")}
        recipe = recipes.get(name, **SHAPE, **extra, tokenizer="wordpiece")
        recipe.tokenizer = tokenizer
        recipe.label_names = ["a", "b"] if name in ("classifier", "multitask") else None
        model = recipe.build_model(total_steps=10)
        if name == "distill":
            assert type(model).__name__ == "DistillationModel"  # trains the student with the teacher inside
        recipe.save(model, str(tmp_path / name))
        paths.append(str(tmp_path / name / "model.keras"))
    result = subprocess.run([sys.executable, "-c", SCRIPT, *paths], capture_output=True, text=True, timeout=600,
                            cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[:5]] == [
        "CausalLM", "MaskedLM", "TextClassifier", "MultiTaskModel", "TextClassifier"
    ]
    assert all(line.split()[1:] == ["AdamW", "WarmupDecay"] for line in lines[:4]), lines
    # distill: its checkpoint holds the student alone, a plain TextClassifier without the
    # DistillationModel's optimizer (evaluate and export compile it as a classifier).
    assert lines[4].split()[1:] == ["-", "-"], lines
    assert lines[-1] == "leaked: []"
