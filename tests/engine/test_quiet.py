"""The command-line tools keep library chatter out of their output, and real warnings in."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV = {**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
       "PYTHONPATH": str(REPO)}

_PROBE = """
from prompt_tuning.engine import quiet
quiet.quiet_libraries()
import tensorflow as tf
tf.constant(1)  # TensorFlow's eager context: on a CPU machine its CUDA probe logs an error
import jax
jax.devices()
from absl import logging
logging.warning('Metadata file does not exist: %s', '/run/checkpoints/5/_CHECKPOINT_METADATA')
logging.warning('Using an uncached FunctionDataset for training is not recommended since ...')
logging.warning("Task '%s' does not support caching. Switching to on-the-fly preprocessing.", 't')
logging.warning('Given sequence lengths are longer than necessary for some evaluation inputs')
logging.warning('A real warning about %s', 'something')
"""


def test_routine_chatter_is_dropped_and_real_warnings_kept():
  done = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, env=ENV, capture_output=True,
                        text=True, timeout=300, check=True)
  lines = done.stderr.splitlines()
  assert len(lines) == 1, done.stderr
  assert lines[0].endswith("A real warning about something")


def test_show_command_prints_only_its_output(tmp_path):
  done = subprocess.run(
      [sys.executable, "-m", "prompt_tuning.data.show", "smoke_last_digit", "--module",
       "prompt_tuning.smoke_data.tasks", "--num_examples", "1"],
      cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0
  assert done.stderr == ""
  assert done.stdout.splitlines()[0] == "task smoke_last_digit"
  assert "  targets_pretokenized: '0'" in done.stdout.splitlines()
