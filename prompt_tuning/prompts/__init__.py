"""Soft prompts: initializers, providers, the insertion hook, ensembles and `.npy` export.

  base          EmbeddedInputs and the input-hook contract (defined in models/inputs.py).
  initializers  where a prompt starts: random, sampled vocabulary, class labels, text, files.
  providers     Prompt ([P, H]) and PromptTable ([K, P, H]): the prompt each example gets.
  combine       inserting a [B, P, H] prompt into a padded batch (placement, visibility).
  hooks         PromptHook: provider + combine, the module a model holds as `input_hook`.
  ensemble      one batched pass over N prompts, then a majority vote.
  npy_io        prompts as [P, H] float32 `.npy` files.
"""
