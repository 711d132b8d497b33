"""The comparison table: target metric, each other task, their normalised average."""
import json

import pytest

from prompt_tuning.methods.promot import report


def _write(path, with_prompt, without_prompt):
  path.write_text(json.dumps({"with_prompt": with_prompt, "without_prompt": without_prompt}))
  return str(path)


def test_table_reads_the_target_with_the_prompt_and_the_rest_without(tmp_path):
  ft = _write(tmp_path / "ft.json", {}, {"t/accuracy": 90.0, "a/accuracy": 10.0,
                                         "b/bleu": 20.0})
  promot = _write(tmp_path / "promot.json", {"t/accuracy": 88.0, "a/accuracy": 99.0},
                  {"t/accuracy": 5.0, "a/accuracy": 60.0, "b/bleu": 30.0})
  text = report.main([f"--row=fine-tuning={ft}", f"--row=ProMoT={promot}",
                      "--target=t/accuracy", "--column=A=a/accuracy", "--column=B=b/bleu"])
  lines = text.splitlines()
  assert lines[0].split(" | ")[0].strip() == "method"
  assert [c.strip() for c in lines[2].split("|")] == ["fine-tuning", "90.0", "10.0", "20.0",
                                                     "15.0"]
  # the target is the prompted score; the other tasks the prompt-free ones.
  assert [c.strip() for c in lines[3].split("|")] == ["ProMoT", "88.0", "60.0", "30.0", "45.0"]


def test_a_missing_value_prints_a_dash_and_no_average(tmp_path):
  row = _write(tmp_path / "r.json", {}, {"a/accuracy": 10.0})
  lines = report.format_table(report.table(
      [("x", report.read_row(row))], target="t/accuracy",
      columns=[("A", "a/accuracy"), ("B", "b/bleu")])).splitlines()
  assert [c.strip() for c in lines[2].split("|")] == ["x", "-", "10.0", "-", "-"]


def test_fewshot_suite_columns_are_the_eight_paper_tasks():
  names = [name for name, _ in report.fewshot_columns("mt5_", 1)]
  assert names == ["cb", "wic", "trivia_qa", "web_questions", "wmt16_ende", "wmt16_enro", "xsum",
                   "wiki_lingua_en"]
  assert dict(report.fewshot_columns("mt5_", 1))["cb"] == "mt5_fewshot_cb_1shot/accuracy"
  assert dict(report.fewshot_columns("", 4))["xsum"] == "fewshot_xsum_4shot/rouge2"


def test_bad_input_is_one_sentence(tmp_path):
  with pytest.raises(ValueError, match=r"No ProMoT metrics file"):
    report.main([f"--row=x={tmp_path}/missing.json", "--target=t"])
  (tmp_path / "bad.json").write_text("{}")
  with pytest.raises(ValueError, match=r"is not a promot_eval metrics file"):
    report.main([f"--row=x={tmp_path}/bad.json", "--target=t"])
  with pytest.raises(ValueError, match=r"--row must be NAME=VALUE"):
    report.main(["--row=nolabel", "--target=t"])
