"""Prompt interpretability: neighbours, norms, label hits, heatmap, order ablations."""
import numpy as np
import pytest
import seqio

from prompt_tuning.methods.ensemble import evaluate as ens
from prompt_tuning.methods.interpret import analysis
from prompt_tuning.methods.interpret import report

from .conftest import LENGTHS, PROMPT_LENGTH

TABLE = np.asarray([[0, 0, 0],     # 0 padding
                    [1, 0, 0],     # 1
                    [2, 0, 0],     # 2 same direction as 1, twice as long
                    [1, 1, 0],     # 3 45 degrees
                    [0, 1, 0],     # 4
                    [-1, 0, 0]],   # 5 opposite
                   np.float32)


def test_neighbours_by_cosine_ties_by_id_and_exclusions():
  ids, sims = analysis.nearest_neighbours(np.asarray([[3, 0, 0]]), TABLE, k=4, exclude=[0])
  assert ids.tolist() == [[1, 2, 3, 4]]
  np.testing.assert_allclose(sims, [[1.0, 1.0, np.sqrt(0.5), 0.0]], atol=1e-9)
  ids, _ = analysis.nearest_neighbours(np.asarray([[3, 0, 0]]), TABLE, k=1, exclude=[0, 1])
  assert ids.tolist() == [[2]]
  with pytest.raises(ValueError, match="same H"):
    analysis.nearest_neighbours(np.ones((2, 4)), TABLE)


def test_norms_against_the_table_and_label_hits():
  result = analysis.norms(np.asarray([[3, 4, 0], [0, 0, 1]]), TABLE)
  np.testing.assert_allclose(result.prompt, [5.0, 1.0])
  assert result.table_max == 2.0 and result.table_min == 0.0
  assert result.above_table_max == 1
  assert "1 of 2" in result.lines()[-1]
  hits = analysis.label_hits(np.asarray([[1, 2], [4, 5]]), {"x": [5, 9], "y": [7]})
  assert hits == {"x": [1], "y": []}


def test_similarity_reorder_and_heatmap(tmp_path):
  prompt = np.asarray([[1, 0], [0, 1], [1, 1]], np.float32)
  sim = analysis.similarity_matrix(prompt)
  np.testing.assert_allclose(sim, [[1, 0, np.sqrt(0.5)], [0, 1, np.sqrt(0.5)],
                                   [np.sqrt(0.5), np.sqrt(0.5), 1]], atol=1e-9)
  np.testing.assert_array_equal(analysis.reorder(prompt, "reversed"), prompt[::-1])
  shuffled = analysis.reorder(prompt, "shuffled", seed=0)
  assert sorted(map(tuple, shuffled.tolist())) == sorted(map(tuple, prompt.tolist()))
  np.testing.assert_array_equal(shuffled, analysis.reorder(prompt, "shuffled", seed=0))
  with pytest.raises(ValueError, match="order ablation"):
    analysis.reorder(prompt, "sideways")
  path = analysis.save_heatmap(sim, str(tmp_path / "sim.png"))
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_describe_decodes_neighbours_and_finds_the_label():
  vocab = seqio.ByteVocabulary()
  rng = np.random.default_rng(0)
  table = rng.normal(size=(260, 8)).astype(np.float32)
  label_id = vocab.encode("7")[0]
  prompt = np.stack([table[label_id] * 3.0, table[vocab.encode("a")[0]]])
  lines = report.describe(prompt, table, vocab, k=5, labels=["7", "q"])
  assert lines[1].startswith("    0: '7' +1.00")
  assert lines[2].startswith("    1: 'a' +1.00")
  assert "label '7' among the neighbours of prompt positions: [0]" in lines
  assert "label 'q' among the neighbours of prompt positions: none" in lines
  # Row 259 lies past the 259-id byte vocabulary: never a neighbour, even when identical.
  ids, _ = analysis.nearest_neighbours(table[259:260], table, k=5,
                                       exclude=report.unused_ids(vocab, 260))
  assert 259 not in ids


def test_order_ablations_of_a_prompt_with_identical_tokens_change_nothing(bank_of, tiny_base):
  import prompt_tuning.smoke_data.tasks  # pylint: disable=unused-import  (registers the task)
  config, _, _ = tiny_base
  bank = bank_of([], capacity=5)
  token = np.random.default_rng(4).normal(size=(1, config.emb_dim))
  prompt = np.repeat(token, PROMPT_LENGTH, axis=0).astype(np.float32)
  data = ens.read_task("smoke_last_digit", split="validation", lengths=LENGTHS, num_examples=8)
  lines = report.order_ablation_lines(bank, data, prompt, batch_size=8,
                                      max_decode_length=LENGTHS["targets"])
  assert len(lines) == 6 and "8 examples" in lines[0]
  values = {line.split()[-1] for line in lines[1:]}
  assert len(values) == 1
  assert set(bank.names) == {"learned", "reversed", "shuffled(seed 0)", "shuffled(seed 1)",
                             "shuffled(seed 2)"}
