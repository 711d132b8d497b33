"""SeqIO glue shared by the task registrations in `tasks/`.

  vocabularies    configurable, lazily loaded SentencePiece vocabularies
  registry        idempotent task/mixture registration
  preprocessors   tokenization, EOS, rank classification, generic formatters
  glue_formats    GLUE/SuperGLUE examples in the T5 text-to-text format
  fewshot         templated k-shot prompts
  reader          DPR/FiD retrieval JSON and greedy passage packing
  p3              the P3 release's folder format and T0's mixture rule
  postprocessors  decoded text -> metric inputs
  metrics         scores on a 0-100 scale
  evaluation      seqio.Evaluator with plain Python model callbacks
  show            `python -m prompt_tuning.data.show TASK`
  testing         offline TFDS mocks and fixtures for tests
"""
