"""Domain-shift pipeline steps
(`pipeline.step_modules = ['prompt_tuning.methods.domain_shift.steps']`)."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional, Sequence

from prompt_tuning.methods.domain_shift import report as report_lib
from prompt_tuning.pipelines.stages import pipeline_step

TABLE_FILE = "table.txt"
SUMMARY_FILE = "summary.json"


@pipeline_step("domain_shift_report", outputs=("table", "summary"))
def domain_shift_report(*, stage_dir: str, runs: Mapping[str, Sequence[str]],
                        rows: Optional[Sequence[Any]] = None):
  """The side-by-side table of the eval stages' metrics (`report.report`).

  Args:
    stage_dir: this stage's folder; `table.txt` and `summary.json` go there.
    runs: `{'pt': [eval folder of each seed], 'mt': [...]}`.
    rows: `[[label, 'task/metric'], ...]` in display order (default: every metric).
  """
  parsed = None if rows is None else [tuple(r) for r in rows]
  if parsed is not None and any(len(r) != 2 for r in parsed):
    raise ValueError(f"domain_shift_report rows must be [label, 'task/metric'] pairs: {rows}.")
  summary, text = report_lib.report({m: list(p) for m, p in runs.items()}, parsed)
  print(text)
  table = os.path.join(stage_dir, TABLE_FILE)
  with open(table, "w") as f:
    f.write(text + "\n")
  path = os.path.join(stage_dir, SUMMARY_FILE)
  with open(path, "w") as f:
    json.dump(report_lib.as_json(summary), f, indent=1)
  return {"table": table, "summary": path}
