"""`prompt_tuning.serve`: answers equal `infer`'s; clear HTTP errors; batching; live prompts."""
import json
import os
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from prompt_tuning import serve
from prompt_tuning.engine import data as data_lib
from prompt_tuning.engine import params as params_lib
from prompt_tuning.methods.ensemble import bank as bank_lib
from prompt_tuning.serving import engine as engine_lib
from prompt_tuning.smoke_data import tasks as smoke_tasks

from .conftest import LENGTHS, PROMPT_LENGTH, random_prompts, single_prompt_model


def call(url, path, body=None, raw=None):
  """(status, JSON answer) of a GET (no body) or POST to the server."""
  data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
  request = urllib.request.Request(url + path, data=data, method="GET" if data is None else "POST")
  try:
    with urllib.request.urlopen(request, timeout=120) as response:
      return response.status, json.loads(response.read())
  except urllib.error.HTTPError as error:
    return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory, tiny_base):
  config, _, _ = tiny_base
  folder = tmp_path_factory.mktemp("prompts")
  paths = {}
  for name, prompt in zip("abc", random_prompts(3, config.emb_dim, seed=11)):
    paths[name] = str(folder / f"{name}.npy")
    np.save(paths[name], prompt)
  return paths


@pytest.fixture(scope="module")
def engine(tiny_base, prompt_files):
  config, frozen, _ = tiny_base
  bank = bank_lib.PromptBank(config=config, frozen_params=frozen, prompt_length=PROMPT_LENGTH,
                             capacity=4)
  for name in "ab":
    bank.add(name, np.load(prompt_files[name]))
  return engine_lib.Engine(bank, smoke_tasks.VOCABULARY, max_input_length=LENGTHS["inputs"],
                           max_decode_length=LENGTHS["targets"], max_rows=4)


@pytest.fixture
def server(engine):
  running = serve.start(engine, max_wait_s=0.05, max_queue=8)
  yield running
  running.close()


def _infer(tmp_path, tiny_base, prompt_path, mode):
  from prompt_tuning import infer as infer_lib
  config, _, base_npz = tiny_base
  groups = (params_lib.ParamGroup(name="prompt", pattern=params_lib.HOOK_PATTERN, trainable=True,
                                  source=params_lib.FromNpy(path=prompt_path)),
            params_lib.ParamGroup(name="model", pattern=None,
                                  source=params_lib.FromNpy(path=base_npz)))
  cfg = data_lib.DatasetConfig(mixture_or_task_name=smoke_tasks.LAST_DIGIT_TASK,
                               task_feature_lengths=LENGTHS, split="validation", batch_size=4,
                               shuffle=False)
  [path] = infer_lib.infer(model=single_prompt_model(config), dataset_cfg=cfg,
                           output_dir=str(tmp_path / mode), mode=mode, param_groups=groups,
                           num_examples=6)
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_server_answers_equal_infer_for_the_same_prompt_and_input(server, tmp_path, tiny_base,
                                                                  prompt_files):
  predicted = _infer(tmp_path, tiny_base, prompt_files["a"], "predict")
  scored = _infer(tmp_path, tiny_base, prompt_files["a"], "score")
  targets = smoke_tasks.generate(split="validation", instructed=False)["targets"]
  for i, record in enumerate(predicted):
    status, answer = call(server.url, "/predict", {"task": "a", "inputs": record["inputs"]})
    assert status == 200 and answer["output"] == record["prediction"]
    status, ranked = call(server.url, "/predict", {"task": "a", "inputs": record["inputs"],
                                                   "choices": [targets[i], "x"]})
    assert status == 200
    np.testing.assert_allclose(ranked["scores"][0], scored[i]["score"], rtol=1e-4, atol=1e-4)
    assert ranked["index"] == int(np.argmax(ranked["scores"]))
  # The prompt matters: task 'b' answers differently on at least one input.
  others = [call(server.url, "/predict", {"task": "b", "inputs": r["inputs"]})[1]["output"]
            for r in predicted]
  assert others != [r["prediction"] for r in predicted]


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server):
  status, answer = call(server.url, "/predict", {"task": "nope", "inputs": "123"})
  assert status == 404 and "Unknown task 'nope'" in answer["error"]
  status, answer = call(server.url, "/predict", raw=b"{not json")
  assert status == 400 and "not valid JSON" in answer["error"]
  status, answer = call(server.url, "/predict", {"task": "a", "inputs": "1" * 40})
  assert status == 413 and "41 tokens long" in answer["error"]
  status, answer = call(server.url, "/predict", {"task": "a"})
  assert status == 400 and "'inputs'" in answer["error"]
  status, answer = call(server.url, "/predict", {"task": "a", "inputs": "1",
                                                 "decoding": {"beams": 2}})
  assert status == 400 and "beams" in answer["error"]
  status, answer = call(server.url, "/predict", {"task": "a", "inputs": "12345"})
  assert status == 200 and isinstance(answer["output"], str)
  status, health = call(server.url, "/health")
  assert status == 200 and health["status"] == "ok" and health["tasks"] == ["a", "b"]


def test_full_queue_answers_overloaded_and_mixed_tasks_share_one_pass(engine):
  server = serve.start(engine, max_wait_s=0.05, max_queue=2, start_worker=False)
  try:
    answers = {}

    def ask(task):
      answers[task] = call(server.url, "/predict", {"task": task, "inputs": "4821"})
    threads = [threading.Thread(target=ask, args=(t,)) for t in "ab"]
    for thread in threads:
      thread.start()
    deadline = time.monotonic() + 30
    while server.batcher.queued() < 2 and time.monotonic() < deadline:
      time.sleep(0.01)
    status, answer = call(server.url, "/predict", {"task": "a", "inputs": "1"})
    assert status == 503 and "overloaded" in answer["error"]
    server.batcher.start()
    for thread in threads:
      thread.join(120)
    assert answers["a"][0] == answers["b"][0] == 200
    # Two tasks, one forward pass of two rows.
    assert (server.batcher.batches, server.batcher.rows) == (1, 2)
    assert call(server.url, "/predict", {"task": "b", "inputs": "1"})[0] == 200
  finally:
    server.close()


def test_prompt_added_while_serving_answers_as_its_single_prompt_model(server, tiny_base,
                                                                      prompt_files):
  config, frozen, _ = tiny_base
  status, answer = call(server.url, "/predict", {"task": "c", "inputs": "9"})
  assert status == 404
  status, answer = call(server.url, "/prompts", {"task": "c", "path": prompt_files["c"]})
  assert status == 200 and "c" in answer["tasks"]
  status, answer = call(server.url, "/prompts", {"task": "d", "path": "/no/such.npy"})
  assert status == 400 and "does not exist" in answer["error"]
  tokens = np.zeros((1, LENGTHS["inputs"]), np.int32)
  ids = list(smoke_tasks.VOCABULARY.encode("3141")) + [1]
  tokens[0, :len(ids)] = ids
  params = {**frozen, "input_hook": {"prompt": np.load(prompt_files["c"])}}
  want = single_prompt_model(config).predict_batch(
      params, {"encoder_input_tokens": tokens}, max_decode_length=LENGTHS["targets"])
  status, answer = call(server.url, "/predict", {"task": "c", "inputs": "3141"})
  assert status == 200
  assert answer["output"] == smoke_tasks.VOCABULARY.decode([int(t) for t in np.asarray(want)[0]])


def test_beam_and_sampling_options(server):
  status, answer = call(server.url, "/predict", {
      "task": "a", "inputs": "77", "decoding": {"method": "beam", "num_decodes": 2}})
  assert status == 200 and len(answer["outputs"]) == 2
  assert answer["scores"][0] >= answer["scores"][1]
  status, answer = call(server.url, "/predict", {
      "task": "b", "inputs": "77",
      "decoding": {"method": "sample", "num_decodes": 3, "temperature": 1.0}})
  assert status == 200 and len(answer["outputs"]) == 3
