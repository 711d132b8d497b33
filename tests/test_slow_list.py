"""The measured `slow` marking: parsing a durations report and what the conftest marks."""
import importlib.util
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
_SPEC = importlib.util.spec_from_file_location("slow_list", HERE / "slow_list.py")
slow_list = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(slow_list)

REPORT = """\
============================= slowest durations ==============================
12.50s setup    tests/a/test_trained.py::test_first
0.40s call     tests/a/test_trained.py::test_first
0.30s call     tests/a/test_trained.py::test_second
2.00s call     tests/b/test_mixed.py::test_big[case one]
0.50s setup    tests/b/test_mixed.py::test_big[case one]
0.90s call     tests/b/test_mixed.py::test_small
0.01s teardown tests/b/test_mixed.py::test_small
1710 passed in 1500.00s
"""


def test_durations_report_is_summed_per_test_and_phase():
  times = slow_list.parse_durations(REPORT.splitlines())
  assert times["tests/b/test_mixed.py::test_big[case one]"] == {"call": 2.0, "setup": 0.5}
  assert times["tests/b/test_mixed.py::test_small"] == {"call": 0.9, "teardown": 0.01}
  assert len(times) == 4


def test_a_costly_setup_lists_its_file_and_slow_tests_elsewhere_are_listed_alone():
  times = slow_list.parse_durations(REPORT.splitlines())
  assert slow_list.slow_entries(times, test_seconds=1.5, setup_seconds=3.0) == [
      "tests/a/test_trained.py", "tests/b/test_mixed.py::test_big[case one]"]


def test_extend_keeps_the_listed_entries_and_adds_the_fast_lanes_slow_ones(tmp_path):
  output = tmp_path / "slow.txt"
  output.write_text("# header\ntests/c/test_old.py::test_kept\n")
  report = tmp_path / "fast.txt"
  report.write_text("1.20s call     tests/d/test_new.py::test_cold_compile\n"
                    "0.10s call     tests/d/test_new.py::test_cheap\n")
  assert slow_list.main([str(report), "--output", str(output), "--extend"]) == 0
  assert slow_list.read_entries(output) == ["tests/c/test_old.py::test_kept",
                                            "tests/d/test_new.py::test_cold_compile"]
  assert slow_list.main([str(report), "--output", str(output)]) == 0
  assert slow_list.read_entries(output) == ["tests/d/test_new.py::test_cold_compile"]


def test_end_to_end_tests_are_marked_slow_so_the_fast_lane_leaves_them_out(request):
  """`-m "not slow"` replaces the default `-m "not e2e"`; e2e tests must still stay out."""
  e2e = [item for item in request.session.items if item.get_closest_marker("e2e")]
  assert all(item.get_closest_marker("slow") for item in e2e)


def _entries():
  return set(slow_list.read_entries(slow_list.DEFAULT_OUTPUT))


def test_every_listed_entry_names_an_existing_test_file():
  entries = _entries()
  assert entries, "tests/slow_tests.txt lists no test"
  for entry in entries:
    assert (HERE.parent / entry.split("::")[0]).is_file(), entry


def test_listed_tests_of_this_session_are_marked_slow(request):
  """In a full run every listed test carries the marker; under -m "not slow" none is here."""
  entries = _entries()
  listed = [item for item in request.session.items if slow_list.is_listed(item.nodeid, entries)]
  assert all(item.get_closest_marker("slow") for item in listed)
  if "not slow" in (request.config.getoption("markexpr") or ""):
    assert not listed


def test_main_writes_the_list_and_refuses_a_file_without_durations(tmp_path, capsys):
  report = tmp_path / "durations.txt"
  report.write_text(REPORT)
  output = tmp_path / "slow.txt"
  assert slow_list.main([str(report), "--output", str(output)]) == 0
  lines = output.read_text().splitlines()
  assert lines[2:] == ["tests/a/test_trained.py", "tests/b/test_mixed.py::test_big[case one]"]
  assert "fast lane took 1 s" in capsys.readouterr().out
  empty = tmp_path / "empty.txt"
  empty.write_text("1 passed\n")
  try:
    slow_list.main([str(empty)])
  except SystemExit as stop:
    assert str(stop) == f"{empty} holds no --durations=0 report lines."
  else:
    raise AssertionError("a report without durations was accepted")
