import keras
import numpy as np
import pytest

import recipes
from zoo.optimization import WarmupDecay


def test_registered_recipes():
    assert {"bert-mlm", "gpt-clm", "classifier"} <= set(recipes.list())


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(KeyError, match="Registered recipes: bert-mlm, classifier, distill, gpt-clm, multitask") as error:
        recipes.get("gpt-cml")
    assert "Did you mean 'gpt-clm'" in str(error.value)
    with pytest.raises(KeyError, match="Valid presets: small, tiny"):
        recipes.get("gpt-clm", preset="huge")
    with pytest.raises(KeyError, match="Valid keys: .*hidden_dim.*") as error:
        recipes.get("gpt-clm", hiden_dim=64)
    assert "Did you mean 'hidden_dim'" in str(error.value)


def test_overrides_and_presets():
    recipe = recipes.get("gpt-clm", preset="tiny", num_layers=3)
    assert recipe.config.num_layers == 3 and recipe.config.preset == "tiny"
    shapes = {
        ("bert-mlm", "tiny"): (2, 128, 2),
        ("bert-mlm", "mini"): (4, 256, 4),
        ("bert-mlm", "small"): (4, 512, 8),
        ("bert-mlm", "base"): (12, 768, 12),
        ("gpt-clm", "tiny"): (2, 128, 2),
        ("gpt-clm", "small"): (12, 768, 12),
    }
    for (name, preset), shape in shapes.items():
        config = recipes.get(name, preset=preset).config
        assert (config.num_layers, config.hidden_dim, config.num_heads) == shape
    assert recipes.get("gpt-clm", preset="small").config.sequence_length == 1024


def test_build_model_is_compiled_with_adamw_and_schedule():
    recipe = recipes.get("gpt-clm", vocabulary_size=64, sequence_length=16, warmup_steps=10, total_steps=100)
    model = recipe.build_model()
    assert model.compiled
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    assert isinstance(model.optimizer.learning_rate, WarmupDecay) or model.optimizer._learning_rate.__class__ is WarmupDecay
    logits = model(np.zeros((2, 16), "int32"))
    assert logits.shape == (2, 16, 64)
    decayed = {v.name for v in model.trainable_variables if model.optimizer._use_weight_decay(v)}
    assert decayed and all("kernel" in name for name in decayed)


def test_warmup_then_decay_schedule():
    schedule = WarmupDecay(1.0, warmup_steps=10, total_steps=110, decay="linear", final_fraction=0.0)
    values = [float(schedule(step)) for step in (0, 5, 10, 60, 110, 500)]
    np.testing.assert_allclose(values, [0.0, 0.5, 1.0, 0.5, 0.0, 0.0], atol=1e-6)
    cosine = WarmupDecay(1.0, warmup_steps=0, total_steps=100, decay="cosine", final_fraction=0.1)
    np.testing.assert_allclose(float(cosine(50)), 0.1 + 0.9 * 0.5, atol=1e-6)
