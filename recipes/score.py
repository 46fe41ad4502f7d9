"""Logits for given token ids: `python -m recipes.score RUN_OR_HF_DIR --tokens 1,2,3 --out logits.npy`.

    --tokens 1,2,3            the ids (comma or space separated), or --tokens-file F (the same in a text
                              file, or an integer .npy array)
    --pixel-values X.npy      MindVL: the images' patches [P, D_p] (merge order, as the Qwen2.5-VL image
    --grid-thw t,h,w          processor flattens them) and one --grid-thw per image, in order; each image
                              is a run of t*h*w/4 image-pad ids in --tokens
    --dtype float32|bfloat16  the compute dtype to build the model in (default: the one it was saved with)

Writes fp32 logits [S, V] (position i scores token i+1) for a run directory (its newest valid checkpoint),
a checkpoints/step_* directory or a serving directory (an export, or a released checkpoint in a layout we
import), and prints one line: the shape, where it went and the argmax of the last position. This is the
number to hold a port to: the same ids through another framework's model give the same logits.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from recipes.cli import run_command

os.environ.setdefault("GLOG_v", "3")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recipes.score", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="run directory, checkpoints/step_* directory or serving directory")
    ids = parser.add_mutually_exclusive_group(required=True)
    ids.add_argument("--tokens", help="token ids, e.g. 1,2,3")
    ids.add_argument("--tokens-file", help="a text file of ids (comma / space / newline separated) or an .npy array")
    parser.add_argument("--pixel-values", help="MindVL: .npy of the images' patches [P, D_p]")
    parser.add_argument("--grid-thw", action="append", help="MindVL: t,h,w of one image in patches (repeat per image)")
    parser.add_argument("--out", required=True, help="where to write the logits (.npy, fp32 [S, V])")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype (default: the saved one)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser.parse_args(argv)


def parse_ids(text: str, what: str) -> np.ndarray:
    """'1,2 3\\n4' -> int32 [4]; a one-line ValueError naming `what` for anything that is not an integer."""
    parts = text.replace(",", " ").split()
    bad = [p for p in parts if not p.lstrip("-").isdigit()]
    if bad:
        raise ValueError(f"{what}: {bad[0]!r} is not a token id; give integers separated by commas or spaces")
    if not parts:
        raise ValueError(f"{what}: no token ids; give at least one, e.g. --tokens 1,2,3")
    return np.asarray([int(p) for p in parts], np.int64)


def read_ids(args) -> np.ndarray:
    if args.tokens is not None:
        return parse_ids(args.tokens, "--tokens")
    path = args.tokens_file
    if path.endswith(".npy"):
        ids = np.load(path)
        if ids.dtype.kind not in "iu" or ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"{path}: a {ids.dtype} array of shape {ids.shape}; --tokens-file .npy must be a "
                             "non-empty 1-D integer array")
        return ids.astype(np.int64)
    with open(path) as f:
        return parse_ids(f.read(), path)


def read_images(args):
    """(pixel values [P, D_p] | None, grid_thw [n, 3] | None) from --pixel-values / --grid-thw."""
    if args.pixel_values is None and not args.grid_thw:
        return None, None
    if args.pixel_values is None or not args.grid_thw:
        raise ValueError("--pixel-values and --grid-thw go together: give the patches and one --grid-thw t,h,w "
                         "per image")
    grids = []
    for g in args.grid_thw:
        values = parse_ids(g, "--grid-thw")
        if values.size != 3:
            raise ValueError(f"--grid-thw: {g!r} is not t,h,w (three integers, in patches), e.g. --grid-thw 1,4,4")
        grids.append(values)
    return np.load(args.pixel_values), np.stack(grids)


def score(path: str, ids, pixel_values=None, grid_thw=None, compute_dtype: str | None = None, log=print):
    """fp32 logits [S, V] of the model at `path` for one sequence (see the module docstring)."""
    from mindspore import Tensor

    from recipes.io.load import load_model

    if compute_dtype == "bfloat16":
        import mindspore as ms

        if ms.get_context("device_target") != "Ascend":
            raise ValueError("--dtype bfloat16: bf16 matmuls need Ascend (no CPU kernel); use --dtype float32 on CPU")
    run = load_model(path, log=log, compute_dtype=compute_dtype)
    ids = np.asarray(ids).reshape(-1)
    vocab = run.model_cfg.vocab_size
    if ids.min() < 0 or ids.max() >= vocab:
        worst = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise ValueError(f"tokens: id {worst} is outside the vocabulary [0, {vocab}) of {path}")
    inputs = run.spec.sequence_inputs(run.model_cfg, ids, pixel_values, grid_thw)
    logits = run.model(*[Tensor(x) for x in inputs]).asnumpy()[0]
    return np.ascontiguousarray(logits.astype(np.float32))


def main(argv=None) -> int:
    args = parse_args(argv)

    def body():
        ids = read_ids(args)
        pixel_values, grid_thw = read_images(args)
        logits = score(args.path, ids, pixel_values, grid_thw, args.dtype)
        out_dir = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(out_dir, exist_ok=True)
        np.save(args.out, logits)
        print(f"logits [{logits.shape[0]}, {logits.shape[1]}] float32 -> {args.out} "
              f"(last position argmax {int(logits[-1].argmax())})")

    return run_command(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
