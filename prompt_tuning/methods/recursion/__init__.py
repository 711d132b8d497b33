"""LM recursion: getting more out of one frozen LM by passing through it twice.

Neural recursion (`connector.Connector`, `model.LMConnectorLMModel`): a small trained
Transformer maps the first pass's final hidden states to the second pass's input embeddings.
See README.md.
"""
