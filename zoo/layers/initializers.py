"""Per-weight initialisers: one seed for a whole model, a distinct derived seed for every weight.

A Keras 3 random initializer draws statelessly from its seed: one instance used for two
weights of the same shape gives them the same values. Every layer of the zoo therefore clones
the initializer it was given before each use, with a seed derived from the original seed and
the name of the weight (or sublayer) it is for. Passed down through the blocks, the derived
seed is a function of the model's seed and the weight's path (`block_1/self_attention/qkv_kernel`):
the same seed rebuilds the same weights, and no two weights share values.
"""

import hashlib

import keras


def derive_seed(seed, name):
    """A seed in [0, 2**31) that depends on `seed` and `name` (stable across processes and platforms)."""
    digest = hashlib.blake2b(f"{seed}/{name}".encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def clone_initializer(initializer, name):
    """A copy of `initializer` for the weight or sublayer `name`, with a seed of its own.

    Initializers without randomness (zeros, ones, constants) come back unchanged. A random one
    created without a seed still has the integer seed Keras drew for it, and the clone derives
    from that: a layer built on its own gets independent weights too, only not reproducibly.
    """
    initializer = keras.initializers.get(initializer)
    config = initializer.get_config()
    seed = getattr(initializer, "seed", None)
    if "seed" not in config or not isinstance(seed, int):
        # Not random, or seeded by a SeedGenerator, which already draws new values at each call.
        return initializer
    config["seed"] = derive_seed(seed, name)
    return initializer.__class__.from_config(config)


def clone_pair(kernel_initializer, residual_kernel_initializer, name):
    """Clones for the sublayer `name` of a kernel initializer and of the initializer of the
    projections into the residual stream (`None`: the kernel initializer), each with its own seed."""
    residual = residual_kernel_initializer or kernel_initializer
    return clone_initializer(kernel_initializer, name), clone_initializer(residual, name + "/residual")
