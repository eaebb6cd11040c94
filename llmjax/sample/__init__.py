"""Text generation from a trained model: KV-cache decoding, sampling and beam search."""
