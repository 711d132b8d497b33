"""The decode benchmark's plumbing on its tiny `--quick` shape (never its timings)."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import decode_benchmark

pytestmark = pytest.mark.slow  # compiles four decodes and starts two worker processes

REPO = Path(__file__).resolve().parents[1]
HAS_HF = all(importlib.util.find_spec(name) for name in ("torch", "transformers"))


def test_quick_run_prints_every_decode_row_with_its_ratio():
  methods = [m for m in decode_benchmark.METHODS if HAS_HF or not m.startswith("hf-")]
  done = subprocess.run(
      [sys.executable, "-m", "benchmarks.decode_benchmark", "--quick", "--methods",
       ",".join(methods)], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  shape = decode_benchmark.get_shape("tiny")
  assert (f"Decode of batch {shape.batch} x {shape.input_length} input tokens, "
          f"{shape.new_tokens} new tokens each") in done.stdout
  lines = done.stdout.splitlines()
  header_at = next(i for i, line in enumerate(lines) if line.startswith("shape"))
  header = [cell.strip() for cell in lines[header_at].split("|")]
  assert header == list(decode_benchmark.COLUMNS)
  rows = {cells[1]: cells for cells in
          ([c.strip() for c in line.split("|")] for line in lines[header_at + 2:])}
  assert list(rows) == methods
  for cells in rows.values():
    seconds, tokens_per_s = float(cells[2]), float(cells[3])
    # Every decode ran exactly new_tokens steps (EOS never ends one early).
    assert tokens_per_s == pytest.approx(shape.batch * shape.new_tokens / seconds, rel=2e-3,
                                         abs=1)
  assert rows["ours-mixed-prompts"][4] == "ours-shared-prompt"
  assert re.fullmatch(r"\d+\.\d\dx", rows["ours-mixed-prompts"][5])
  if HAS_HF:
    assert rows["ours-greedy"][4] == "hf-greedy" and rows["ours-beam4"][4] == "hf-beam4"
    assert re.fullmatch(r"\d+\.\d\dx", rows["ours-beam4"][5])


@pytest.mark.parametrize("argv, message", [
    (["--methods", "ours-beam8"], "Unknown methods ['ours-beam8']"),
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--new_tokens", "0"], "--new_tokens must be >= 1"),
])
def test_bad_arguments_stop_with_one_clear_sentence(argv, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    decode_benchmark.parse_args(argv)
