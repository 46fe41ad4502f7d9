"""The training engine: typed recipe configuration (config.py), the trainer and its compiled steps
(trainer.py), AdamW and the learning-rate schedule (optim.py), the non-finite / spike guard (guard.py)."""
