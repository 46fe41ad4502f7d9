"""Formats on disk: checkpoints of a run (checkpoint.py), run-like directories that derived checkpoints
are written as (rundir.py), safetensors with bfloat16 (safetensors_io.py), the Hugging Face serving layout
both ways (hf.py), and one `load_model` for runs, checkpoints and serving directories (load.py)."""
