"""Running recipes: strategies, optimisation, callbacks, checkpoints and the `zoo` command."""
