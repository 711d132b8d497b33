"""The peer baseline: the same prompt-tuning step with Hugging Face PEFT on PyTorch.

A randomly initialised `T5ForConditionalGeneration` of the benchmarked shape (gated-GELU, untied
output projection, no dropout) is wrapped by `peft.get_peft_model` with 100-token (or the
shape's) prompt tuning; the step is forward with labels, backward, and a `transformers`
Adafactor update with the prompt-tuning settings our step uses (constant learning rate 0.3,
decay 0.8, update clipping 1.0, no parameter scaling). Only the prompt requires gradients.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from benchmarks.shapes import BenchShape


def _t5_config(shape: BenchShape, transformers):
  cfg = shape.config
  if cfg.mlp_activations != ("gelu", "linear") or cfg.logits_via_embedding:
    raise ValueError("The PEFT baseline is built for T5 1.1 shapes (gated-GELU, untied logits).")
  return transformers.T5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.emb_dim, d_kv=cfg.head_dim, d_ff=cfg.mlp_dim,
      num_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
      num_heads=cfg.num_heads,
      relative_attention_num_buckets=cfg.relative_attention_num_buckets,
      relative_attention_max_distance=cfg.relative_attention_max_distance,
      feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def build_step(shape: BenchShape, *, dtype: str, threads: int,
               batch: dict[str, np.ndarray], device: str = "cpu") -> Callable[[], None]:
  """Builds the PEFT model and returns `run()`, which performs one prompt-tuning step.

  `device` is 'cpu' or 'gpu' (CUDA); on a GPU `run()` waits for the step's kernels to finish.
  """
  import peft  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  config = _t5_config(shape, transformers)
  model = transformers.T5ForConditionalGeneration(config)
  # transformers ties lm_head to the embedding even for an untied config; untie it.
  model.lm_head.weight = torch.nn.Parameter(
      torch.randn(config.vocab_size, config.d_model) * config.d_model ** -0.5)
  torch_device = "cuda" if device == "gpu" else "cpu"
  model = model.to(getattr(torch, dtype)).to(torch_device)
  prompt_config = peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM",
                                          num_virtual_tokens=shape.prompt_length)
  model = peft.get_peft_model(model, prompt_config)
  model.train()
  trainable = [p for p in model.parameters() if p.requires_grad]
  optimizer = transformers.optimization.Adafactor(
      trainable, lr=0.3, decay_rate=-0.8, clip_threshold=1.0, scale_parameter=False,
      relative_step=False, warmup_init=False, weight_decay=1e-5)
  input_ids = torch.from_numpy(batch["encoder_input_tokens"].astype(np.int64)).to(torch_device)
  labels = torch.from_numpy(batch["decoder_target_tokens"].astype(np.int64)).to(torch_device)
  attention_mask = torch.ones_like(input_ids)

  def run() -> None:
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if torch_device == "cuda":
      torch.cuda.synchronize()

  return run
