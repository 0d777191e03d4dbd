"""espnet_prune: learned structured pruning for ESPnet Conformer ASR models."""

from setuptools import find_packages, setup

setup(
    name="espnet_prune",
    version="0.1.0",
    description=(
        "ESPnet plugin: hard-concrete structured pruning with Lagrangian sparsity "
        "control and layerwise distillation for Conformer ASR"
    ),
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["espnet_prune", "espnet_prune.*"]),
    # the mini corpus's sentence grammar (read by espnet_prune/data/mini_corpus/grammar.py)
    package_data={"espnet_prune.data.mini_corpus": ["grammar.json"]},
    python_requires=">=3.10",
    # Ranges the code supports (oldest tested: espnet 202511 with torch 2.11); the
    # exact set that `make test` / `make demo` install is pinned in constraints.txt.
    install_requires=[
        "espnet>=202511",
        "torch>=2.11",
        "torchaudio>=2.11",
        "sentencepiece",
        "pyyaml",
        "kaldiio",
        "soundfile",
        "espeakng-loader",  # bundles libespeak-ng: the mini corpus synthesizer, no root needed
        "numpy",
        "matplotlib>=3.7",  # RESULTS.md plots (Agg backend, no display needed)
        # training curves (the recipe's --use_tensorboard true, also ESPnet's default).
        # Measured with this set's NumPy 2 / protobuf: 2.18 is the first that writes and
        # reads events (2.13-2.17 use np.string_, 2.11 and 1.15 need protobuf < 4)
        "tensorboard>=2.18",
    ],
    extras_require={"test": ["pytest", "pytest-xdist"]},
)
