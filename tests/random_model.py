"""A small random model in Hugging Face format, for tests that train or generate (no warm start:
the coin environments of tests/plugins need none)."""

from __future__ import annotations

from pathlib import Path

from grpopp.recipes.tiny import TinyModelConfig, build_model, build_tokenizer


def save_random_model(path: Path, num_layers: int = 1) -> Path:
    """The project's tiny architecture at width 32, randomly initialised, saved with its tokenizer."""
    tokenizer = build_tokenizer()
    config = TinyModelConfig(hidden_size=32, num_layers=num_layers, num_heads=2, intermediate_size=64)
    build_model(tokenizer, config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
