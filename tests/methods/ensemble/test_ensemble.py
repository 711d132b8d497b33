"""Prompt ensembles: one batched pass equals N separate passes; the report's numbers."""
import numpy as np
import pytest

from prompt_tuning.methods.ensemble import evaluate as ens
from prompt_tuning.methods.ensemble import loading

from .conftest import PROMPT_LENGTH, random_prompts, single_prompt_model


def _tokens(count, length=16, seed=3):
  rng = np.random.default_rng(seed)
  out = np.zeros((count, length), np.int32)
  for i in range(count):
    n = int(rng.integers(3, 8))
    out[i, :n] = rng.integers(51, 61, size=n)  # digit bytes
    out[i, n] = 1
  return out


def test_one_batched_pass_equals_separate_passes(tiny_base, bank_of):
  config, frozen, _ = tiny_base
  prompts = random_prompts(3, config.emb_dim)
  bank = bank_of(prompts)
  features = {"encoder_input_tokens": _tokens(5)}
  # batch_size 4: two passes of 12 rows, the second padded; [N, E, T] comes back.
  together = ens.ensemble_predict(bank, ["p0", "p1", "p2"], features, batch_size=4,
                                  max_decode_length=4)
  assert together.shape == (3, 5, 4)
  single = single_prompt_model(config)
  for n, prompt in enumerate(prompts):
    params = {**frozen, "input_hook": {"prompt": prompt}}
    alone = np.asarray(single.predict_batch(params, features, max_decode_length=4))
    np.testing.assert_array_equal(together[n], alone)
  # The prompts matter: not every prompt gives the same answers (else the test proves little).
  assert not (np.array_equal(together[0], together[1]) and np.array_equal(together[1],
                                                                           together[2]))


def test_bank_scores_equal_single_prompt_scores(tiny_base, bank_of):
  config, frozen, _ = tiny_base
  prompts = random_prompts(2, config.emb_dim, seed=1)
  bank = bank_of(prompts)
  from prompt_tuning.smoke_data.tasks import VOCABULARY
  batch = {"encoder_input_tokens": _tokens(4),
           **ens.target_features(VOCABULARY, ["1", "2", "3", "45"], 4)}
  mixed = bank.score(batch, [1, 0, 1, 0])
  single = single_prompt_model(config)
  for n, prompt in enumerate(prompts):
    alone = np.asarray(single.score_batch({**frozen, "input_hook": {"prompt": prompt}}, batch))
    rows = [i for i, p in enumerate([1, 0, 1, 0]) if p == n]
    np.testing.assert_allclose(mixed[rows], alone[rows], rtol=1e-5, atol=1e-5)


class _Task:
  """Accuracy over stripped strings, like the smoke tasks."""

  predict_metric_fns = [lambda t, p: {"accuracy": 100.0 * np.mean(
      [a == b for a, b in zip(t, p)])}]

  @staticmethod
  def postprocess_fn(text, example=None, is_target=False):
    del example, is_target
    return text.strip()


class _StubBank:
  """Answers fixed per prompt; scores candidate 'x' by the table `SCORES[(prompt, example)]`."""

  def __init__(self, answers, scores):
    self.answers, self.scores = answers, scores  # answers[n][e]; scores[(n, e, text)]

  def row(self, name):
    return int(name[1:])

  def predict(self, batch, prompt_ids, *, max_decode_length, decoder_params=None):
    del decoder_params
    out = np.zeros((len(prompt_ids), 1, max_decode_length), np.int32)
    for i, row in enumerate(prompt_ids):
      e = int(batch["encoder_input_tokens"][i, 0]) - 100
      text = self.answers[row][e] if 0 <= e < len(self.answers[row]) else ""
      out[i, 0, :len(text)] = [ord(c) + 3 for c in text]
    return out, np.zeros((len(prompt_ids), 1))

  def score(self, batch, prompt_ids):
    out = []
    for i, row in enumerate(prompt_ids):
      e = int(batch["encoder_input_tokens"][i, 0]) - 100
      text = "".join(chr(t - 3) for t in batch["decoder_target_tokens"][i] if t > 1)
      out.append(self.scores.get((row, e, text), -5.0))
    return np.asarray(out, np.float32)


def test_report_numbers_vote_ties_and_score_average():
  import seqio
  # 4 examples, targets a b c d; 3 prompts.
  answers = [["a", "b", "x", "y"],   # p0: 2/4 right
             ["a", "z", "c", "q"],   # p1: 2/4 right
             ["w", "b", "c", "r"]]   # p2: 2/4 right
  # Vote: e0 a (2 votes) ok; e1 b ok; e2 c ok; e3 three-way tie -> p0's 'y' (wrong): 75%.
  # Score average: e3 candidates y, q, r; make 'd'... not a candidate, so pick 'q' by scores
  # (still wrong); e0: 'w' beats 'a' on average -> wrong; e1, e2 right -> 50%.
  scores = {(0, 0, "w"): -0.1, (1, 0, "w"): -0.1, (2, 0, "w"): -0.1,
            (0, 3, "q"): -1.0, (1, 3, "q"): -1.0, (2, 3, "q"): -1.0,
            (0, 1, "b"): -0.5, (1, 1, "b"): -0.5, (2, 1, "b"): -0.5,
            (0, 2, "c"): -0.5, (1, 2, "c"): -0.5, (2, 2, "c"): -0.5}
  data = ens.TaskData(
      features={"encoder_input_tokens": np.arange(100, 104, dtype=np.int32)[:, None]},
      examples=[{}] * 4, targets=["a", "b", "c", "d"], vocabulary=seqio.ByteVocabulary(),
      task=_Task())
  report = ens.evaluate(_StubBank(answers, scores), ["p0", "p1", "p2"], data, batch_size=2,
                        max_decode_length=3)
  assert [m["accuracy"] for m in report["per_prompt"].values()] == [50.0, 50.0, 50.0]
  assert report["mean"]["accuracy"] == 50.0 and report["best"]["accuracy"] == 50.0
  assert report["majority_vote"]["accuracy"] == 75.0
  assert report["score_average"]["accuracy"] == 50.0
  lines = ens.table_lines(report)
  assert lines[-2].split()[-1] == "75.00" and lines[-1].split()[-1] == "50.00"


def test_prompts_of_different_lengths_are_refused(tmp_path):
  np.save(tmp_path / "a.npy", np.ones((3, 4), np.float32))
  np.save(tmp_path / "b.npy", np.ones((5, 4), np.float32))
  with pytest.raises(ValueError, match="different shapes"):
    loading.load_prompts([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")])


def test_run_folder_gives_its_newest_prompt_and_missing_ones_are_named(tmp_path):
  for step, value in ((10, 1.0), (200, 2.0)):
    folder = tmp_path / "run" / "numpy_checkpoints" / f"checkpoint_{step}"
    folder.mkdir(parents=True)
    np.save(folder / "input_hook.prompt.npy", np.full((PROMPT_LENGTH, 4), value, np.float32))
  assert loading.load_prompt(str(tmp_path / "run"))[0, 0] == 2.0
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no exported prompt"):
    loading.load_prompt(str(tmp_path / "empty"))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    loading.load_prompt(str(tmp_path / "nope.npy"))


def test_bank_refuses_wrong_shapes_unknown_names_and_overflow(bank_of, tiny_base):
  config, _, _ = tiny_base
  bank = bank_of(random_prompts(1, config.emb_dim), capacity=2)
  with pytest.raises(ValueError, match="shape"):
    bank.add("bad", np.zeros((PROMPT_LENGTH + 1, config.emb_dim)))
  with pytest.raises(ValueError, match="Unknown prompt 'nope'"):
    bank.row("nope")
  bank.add("p1", np.zeros((PROMPT_LENGTH, config.emb_dim)))
  with pytest.raises(ValueError, match="full"):
    bank.add("p2", np.zeros((PROMPT_LENGTH, config.emb_dim)))
  with pytest.raises(ValueError, match="already"):
    bank.add("p1", np.ones((PROMPT_LENGTH, config.emb_dim)))


def test_lengths_flag_is_checked():
  assert ens.parse_lengths("inputs:16,targets:4") == {"inputs": 16, "targets": 4}
  with pytest.raises(ValueError, match="malformed"):
    ens.parse_lengths("inputs=16")
