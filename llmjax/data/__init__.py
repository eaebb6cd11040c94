"""Corpus discovery, tokenizer, token caches and the Grain batch pipeline."""
