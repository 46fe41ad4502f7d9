"""Export a run to the serving (Hugging Face Hub) layout that vLLM / vLLM-Ascend / MindIE / transformers read:

    python -m recipes.export RUN_OR_CKPT --out DIR [--dtype fp32|bf16] [--shard-size 2GB] [--mindir]
                             [--mindir-seq-len 128] [--mindir-patches 256] [--layout deepseek_v3] [--overwrite]
                             [--quantize w8a8|int8-weight]

The files written and the layout rules are in recipes.io.hf (and docs/export.md); `make export` wraps this.
`--quantize` writes INT8 weights in msModelSlim's layout (recipes.io.quantize, docs/export.md).
User errors print one line and exit with status 2 (`--debug` for the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("GLOG_v", "3")

from recipes.cli import run_command  # noqa: E402
from recipes.io import safetensors_io  # noqa: E402
from recipes.io.hf import DEFAULT_SHARD_SIZE, INDEX_FILE, export_run, hf_files  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m recipes.export", description=__doc__.splitlines()[0])
    p.add_argument("path", help="run directory (newest valid checkpoint) or a checkpoints/step_* directory")
    p.add_argument("--out", required=True, help="output directory (serving layout)")
    p.add_argument("--dtype", choices=safetensors_io.EXPORT_DTYPES, default="fp32", help="stored float dtype")
    p.add_argument("--shard-size", default=DEFAULT_SHARD_SIZE, help="max bytes per shard, e.g. 2GB, 500MB")
    p.add_argument("--mindir", action="store_true", help="also write model.mindir (inference graph)")
    p.add_argument("--mindir-seq-len", type=int, default=128, help="static sequence length of the MINDIR graph")
    p.add_argument("--mindir-patches", type=int, default=256, help="MindVL: static patch slots of the MINDIR graph")
    p.add_argument("--layout", default=None, help="serving layout by model_type (Ultra: pangu_ultra_moe, the "
                   "default, or deepseek_v3); default: the architecture's own, or an imported run's source layout")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--quantize", choices=("w8a8", "int8-weight"), default=None,
                   help="INT8 per-channel weights + quant_model_description.json (w8a8: W8A8_DYNAMIC, "
                        "int8-weight: W8A16)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def body():
        if args.quantize and args.mindir:
            raise ValueError("--quantize with --mindir: the MINDIR graph is the float model; export the MINDIR "
                             "without --quantize into another directory")
        export_run(args.path, args.out, args.dtype, args.shard_size, args.mindir, args.mindir_seq_len, args.overwrite,
                   mindir_patches=args.mindir_patches, layout=args.layout)
        if args.quantize:
            from recipes.io.quantize import quantize_dir

            quantize_dir(args.out, hf_files(args.out), INDEX_FILE, args.quantize, args.dtype)

    return run_command(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
