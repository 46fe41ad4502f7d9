"""Import a serving-layout (Hub) directory as a run of ours: `python -m recipes.import_hf HF_DIR --out DIR
[--overwrite]`.

The weights go through recipes.io.hf.import_hf (config.json -> our config dataclass, the spec's
from_hf, strict about missing / unexpected / mis-shaped tensors) and are written as a run-like directory
(recipes.io.rundir): DIR/config.yaml (model: arch + every config field; data.tokenizer_model: the copied
tokenizer.model when the export has one) + DIR/checkpoints/step_00000000/. Use DIR as `init_from` of a
recipe, or with recipes.evaluate / recipes.export.

A checkpoint with only a tokenizer.json (Qwen2 / Qwen2.5) gets it copied and named by data.tokenizer_model (read
with the `tokenizers` library). MindVL (model_type qwen2_5_vl, or mindvl_pangu): its tokenizer.json is MindVL's
ByteTokenizer or the checkpoint's own tokenizer (copied into DIR with its companion files and named by
data.tokenizer_json; one lacking MindVL's special tokens, or whose vision token ids disagree with config.json, is
refused in one line); preprocessor_config.json is copied into DIR (with its resolution-search record; exporting
DIR again writes the same file) and its min/max_pixels become the run's data budget.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("GLOG_v", "3")

from recipes.cli import run_command  # noqa: E402
from recipes.io.hf import import_to_run  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipes.import_hf", description=__doc__.splitlines()[0])
    p.add_argument("path", help="serving-layout directory (config.json + safetensors)")
    p.add_argument("--out", required=True, help="output run-like directory")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    args = p.parse_args(argv)

    def body():
        import_to_run(args.path, args.out, args.overwrite)

    return run_command(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
