"""The demo's second stage of textual recursion: what p2 reads, built from sampled decodes."""
import numpy as np

from prompt_tuning.methods.recursion import demo


def test_sampled_decodes_become_answer_tokens_without_eos_or_padding():
  assert demo.candidate_tokens([5, 6, 1]) == (5, 6)
  assert demo.candidate_tokens([7, 1, 0]) == (7,)   # an early EOS: a one-token answer
  assert demo.candidate_tokens([1, 0, 0]) == ()     # an empty answer
  assert demo.candidate_tokens([4, 0, 9]) == (4, 9)
  assert demo.unique([(5, 6), (), (5, 6), (7,), (8, 9)], 2) == [(5, 6), (7,)]


def test_p2_reads_the_candidates_then_the_question_right_before_its_answer():
  question = [4, 5, 6, demo.Q2]
  sampled = [[5, 6, 1], [1, 0, 0], [5, 6, 1], [7, 1, 0]]
  inputs = demo.second_stage_inputs(question, [demo.candidate_tokens(d) for d in sampled])
  assert inputs == [demo.C, 5, 6, demo.C, 7] + question
  batch = demo.prefix_lm_batch([inputs], [[8, 9]])
  tokens = batch["decoder_input_tokens"][0]
  prompt = batch["decoder_causal_attention"][0] > 0
  # Only the start slot is 0 and no EOS precedes the answer: nothing in the input reads as
  # padding or as the end of the text.
  assert list(tokens[prompt]) == [0] + inputs
  assert 1 not in inputs and 0 not in inputs
  # The answer follows the question at the distances p1 sees (the candidates come first).
  first_answer = int(np.argmax(batch["decoder_loss_weights"][0]))
  assert list(batch["decoder_target_tokens"][0, first_answer - len(question):first_answer]) \
      == question
  one_pass = demo.prefix_lm_batch([question], [[8, 9]])
  assert int(np.argmax(one_pass["decoder_loss_weights"][0])) == len(question)
