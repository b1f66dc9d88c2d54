"""Install the zoo: layers and models (`zoo`), recipes (`recipes`), the trainer and CLI (`trainers`)."""

from setuptools import find_packages, setup

setup(
    name="keras-zoo",
    version="0.1.0",
    description="Keras 3 transformer model zoo and trainer: recipes, tf.distribute, raw-text SavedModels",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["zoo", "zoo.*", "recipes", "recipes.*", "trainers", "trainers.*", "serving", "serving.*"]),
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tensorflow-text>=2.21,<2.22",
        "keras>=3.15,<4",
        "keras-hub>=0.32,<0.33",
        "tensorboard>=2.21,<2.22",
        "numpy>=1.26,<3",
        "pyyaml>=6,<7",
        "safetensors>=0.4,<1",
        "tokenizers>=0.20,<1",  # trains the BPE vocabularies; the tests' reference tokenizer
        "tensorflow-serving-api>=2.21,<2.22",  # PredictionLog protos: exports carry TF Serving warm-up records
        "werkzeug>=3.0,<4",  # the TF-Serving-compatible HTTP server (zoo serve)
        "matplotlib>=3.8,<4",  # confusion-matrix, learning-curve and trade-off plots (PNG, Agg backend)
        "pillow>=10,<14",  # the tests decode the PNGs with it (matplotlib needs it too)
    ],
    extras_require={
        # jax (CPU) runs the layer tests on a second backend: the zoo's layers must stay backend-agnostic.
        "test": [
            "pytest>=8,<10", "pytest-xdist>=3.5,<4", "jax[cpu]>=0.4.34,<0.11",
            "tf2onnx>=1.17,<2", "onnx>=1.17,<2", "onnxruntime>=1.20,<2",  # the ONNX export and its check
        ],
        # zoo export --format onnx (Keras' ONNX export converts the TensorFlow graph with tf2onnx).
        "onnx": ["tf2onnx>=1.17,<2", "onnx>=1.17,<2"],
    },
    entry_points={"console_scripts": ["zoo=trainers.cli:main"]},
)
