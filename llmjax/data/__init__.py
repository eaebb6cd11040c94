"""Raw text sources, tokenizers, preparation into token shards, datasets and mixtures, and the
Grain batch pipeline."""
