"""The domain-shift report: mean and sample std over seeds, the difference, the table, the
pipeline step, and clear errors; checked against values computed by hand."""
import json
import math
import os

import pytest

from prompt_tuning.methods.domain_shift import report
from prompt_tuning.methods.domain_shift import steps
from prompt_tuning.pipelines import stages

# Row A: PT 80, 82, 87 -> mean 83, squared deviations 9 + 1 + 16 = 26, std sqrt(26 / 2) = 3.606;
#        MT 70, 74, 72 -> mean 72, 4 + 4 + 0 = 8, std sqrt(8 / 2) = 2; difference +11.
# Row B: PT 50, 50, 50 -> mean 50, std 0; MT 60, 61, 65 -> mean 62, 4 + 1 + 9 = 14,
#        std sqrt(7) = 2.646; difference -12.
PT = [{"a/f1": 80.0, "b/em": 50.0}, {"a/f1": 82.0, "b/em": 50.0}, {"a/f1": 87.0, "b/em": 50.0}]
MT = [{"a/f1": 70.0, "b/em": 60.0}, {"a/f1": 74.0, "b/em": 61.0}, {"a/f1": 72.0, "b/em": 65.0}]
ROWS = [("A F1", "a/f1"), ("B EM", "b/em")]


def _write_pipeline(root, pt=PT, mt=MT):
  """Eval stage folders as the pipeline leaves them; an older first row precedes each result."""
  for method, seeds in (("pt", pt), ("mt", mt)):
    for seed, metrics in enumerate(seeds):
      folder = os.path.join(root, f"{method}_seed{seed}_eval", "metrics")
      os.makedirs(folder)
      with open(os.path.join(folder, "infer_eval.jsonl"), "w") as f:
        f.write(json.dumps({"step": 10, **{k: 0.0 for k in metrics}}) + "\n")
        f.write(json.dumps({"step": 20, **metrics}) + "\n")
  os.makedirs(os.path.join(root, "report"))  # other stage folders are ignored
  return str(root)


def test_mean_and_sample_std_match_hand_computed_values():
  rows = report.summarise({"pt": PT, "mt": MT}, ROWS)
  a, b = rows
  assert a.summaries["pt"].mean == pytest.approx(83.0)
  assert a.summaries["pt"].std == pytest.approx(math.sqrt(13.0))
  assert a.summaries["pt"].std == pytest.approx(3.6056, abs=1e-4)
  assert a.summaries["mt"].mean == pytest.approx(72.0)
  assert a.summaries["mt"].std == pytest.approx(2.0)
  assert a.difference("pt", "mt") == pytest.approx(11.0)
  assert b.summaries["pt"].std == 0.0
  assert b.summaries["mt"].mean == pytest.approx(62.0)
  assert b.summaries["mt"].std == pytest.approx(math.sqrt(7.0))
  assert b.difference("pt", "mt") == pytest.approx(-12.0)


def test_table_cells_round_to_one_decimal():
  text = report.format_table(report.summarise({"pt": PT, "mt": MT}, ROWS))
  lines = text.splitlines()
  assert lines[0].split("  ")[0].strip() == "task"
  assert "prompt tuning (3 seeds)" in lines[0] and "model tuning (3 seeds)" in lines[0]
  assert "PT - MT" in lines[0]
  assert set(lines[1]) <= {"-", " "}
  assert lines[2].split() == ["A", "F1", "83.0", "±", "3.6", "72.0", "±", "2.0", "+11.0"]
  assert lines[3].split() == ["B", "EM", "50.0", "±", "0.0", "62.0", "±", "2.6", "-12.0"]


def test_one_seed_has_no_std():
  [row] = report.summarise({"pt": PT[:1], "mt": MT[:1]}, ROWS[:1])
  assert math.isnan(row.summaries["pt"].std)
  line = report.format_table([row]).splitlines()[2]
  assert line.split() == ["A", "F1", "80.0", "±", "-", "70.0", "±", "-", "+10.0"]


def test_default_rows_are_every_metric_sorted():
  rows = report.summarise({"pt": PT, "mt": MT})
  assert [(r.label, r.key) for r in rows] == [("a/f1", "a/f1"), ("b/em", "b/em")]


def test_collect_reads_the_last_row_of_each_seed_in_seed_order(tmp_path):
  root = _write_pipeline(tmp_path)
  runs = report.collect(root)
  assert runs == {"pt": [os.path.join(root, f"pt_seed{k}_eval") for k in range(3)],
                  "mt": [os.path.join(root, f"mt_seed{k}_eval") for k in range(3)]}
  assert report.read_metrics(runs["pt"][2]) == {"a/f1": 87.0, "b/em": 50.0}
  rows, text = report.report(runs, ROWS)
  assert rows[0].summaries["pt"].values == (80.0, 82.0, 87.0)
  assert "+11.0" in text


def test_command_line_prints_and_writes_the_table(tmp_path, capsys):
  root = _write_pipeline(tmp_path / "pipe")
  out = tmp_path / "table.txt"
  text = report.main([f"--pipeline_dir={root}", "--row=A F1=a/f1", f"--out={out}"])
  assert capsys.readouterr().out.strip() == text
  assert out.read_text().strip() == text
  assert len(text.splitlines()) == 3 and "83.0 ± 3.6" in text


def test_pipeline_step_writes_table_and_summary(tmp_path, capsys):
  root = _write_pipeline(tmp_path / "pipe")
  spec = stages.registered_step("domain_shift_report")
  assert spec is not None and spec.outputs == ("table", "summary")
  stage_dir = tmp_path / "report_stage"
  stage_dir.mkdir()
  runs = report.collect(root)
  outputs = steps.domain_shift_report(stage_dir=str(stage_dir), runs=runs,
                                      rows=[list(r) for r in ROWS])
  assert outputs == {"table": str(stage_dir / "table.txt"),
                     "summary": str(stage_dir / "summary.json")}
  assert "+11.0" in capsys.readouterr().out
  summary = json.loads((stage_dir / "summary.json").read_text())
  assert summary[0]["label"] == "A F1" and summary[0]["pt"]["values"] == [80.0, 82.0, 87.0]
  assert summary[0]["pt"]["std"] == pytest.approx(math.sqrt(13.0))
  assert summary[1]["difference"] == pytest.approx(-12.0)


def test_errors_name_what_is_wrong(tmp_path):
  with pytest.raises(ValueError, match="Metric 'c/f1' is missing from pt run"):
    report.summarise({"pt": PT, "mt": MT}, [("C", "c/f1")])
  with pytest.raises(ValueError, match="No evaluation metrics file"):
    report.read_metrics(str(tmp_path / "nowhere"))
  with pytest.raises(ValueError, match="holds no finished eval stage"):
    report.collect(str(tmp_path))
  with pytest.raises(ValueError, match=r"No model tuning runs \(mt\)"):
    report.report({"pt": []}, None)
  with pytest.raises(ValueError, match="must be LABEL=task/metric"):
    report.parse_row("no-key")
  with pytest.raises(ValueError, match=r"rows must be \[label, 'task/metric'\] pairs"):
    steps.domain_shift_report(stage_dir=str(tmp_path), runs={"pt": [], "mt": []},
                              rows=[["only label"]])
