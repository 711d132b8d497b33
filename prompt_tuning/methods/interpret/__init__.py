"""Looking inside a learned prompt: nearest vocabulary tokens, norms, similarity, order."""
