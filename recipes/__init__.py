"""Recipes: configuration, the runner, the trainer, checkpointing and the data pipeline."""
