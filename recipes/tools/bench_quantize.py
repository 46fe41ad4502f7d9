"""INT8 export accuracy: `python -m recipes.tools.bench_quantize RUN [--limit N] [--json]`.

Exports RUN three times (fp32, `--quantize int8-weight`, `--quantize w8a8`) into a temporary directory,
loads each back with recipes.io.load.load_model (INT8 dequantised) and reports, per export:
  * exact match: greedy answers on the run's held-out conversations (recipes.evaluate, the run's data);
  * logits cosine: mean over held-out prompts and positions of cos(fp32 logits, export logits);
  * max weight error in quantisation steps: max |dequantised - fp32| / scale over quantised weights;
  * size: bytes of the safetensors shards.
The w8a8 row also rounds activations as W8A8_DYNAMIC serving does (`simulate_dynamic_activations`:
per-token symmetric int8 at the input of every quantised projection; the routed experts' input is
rounded once before the experts, their down-projection input is not: they run as one batched op).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np


def _shard_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory) if f.endswith(".safetensors"))


def _logits(model, prompts):
    from mindspore import Tensor

    out = []
    for p in prompts:
        ids = np.array([p], np.int32)
        pos = np.arange(len(p), dtype=np.int32)[None]
        out.append(np.array(model(Tensor(ids), Tensor(pos), Tensor(np.ones_like(ids))).asnumpy())[0])
    return out


def fake_quant_per_token(x):
    """x rounded to symmetric int8 per token (last axis), back in x's dtype."""
    from mindspore import ops

    scale = ops.maximum(ops.abs(x).max(axis=-1, keepdims=True) / 127.0, 1e-12)
    return (ops.clip(ops.round(x / scale), -127, 127) * scale).astype(x.dtype)


def simulate_dynamic_activations(model, num_hidden_layers: int) -> int:
    """Wrap the quantised projections (and the routed experts) of a loaded model so their inputs are
    rounded per token; returns how many cells were wrapped."""
    from mindspore import nn

    from pangu.common.layers import Linear
    from pangu.common.moe import GroupedExperts
    from recipes.io.quantize import QUANTIZED_LINEARS

    class RoundInput(nn.Cell):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def construct(self, x, *args):
            return self.inner(fake_quant_per_token(x), *args)

    targets = []
    for name, cell in model.cells_and_names():
        parts = name.split(".")
        if len(parts) < 4 or parts[:2] != ["model", "layers"] or int(parts[2]) >= num_hidden_layers:
            continue
        if (isinstance(cell, Linear) and parts[-1] in QUANTIZED_LINEARS) or isinstance(cell, GroupedExperts):
            targets.append(name)
    cells = dict(model.cells_and_names())
    for name in targets:
        parent_name, attr = name.rsplit(".", 1)
        setattr(cells[parent_name], attr, RoundInput(cells[name]))
    return len(targets)


def max_step_error(fp32_dir: str, q_dir: str) -> float:
    """max |dequantised - original| / scale over the quantised weights (<= 0.5 by construction)."""
    from recipes.io import safetensors_io
    from recipes.io.hf import hf_files
    from recipes.io.quantize import DESCRIPTION_FILE, FLOAT, dequantize_weight

    with open(os.path.join(q_dir, DESCRIPTION_FILE)) as f:
        desc = json.load(f)
    ref_files, q_files = hf_files(fp32_dir), hf_files(q_dir)
    worst = 0.0
    for name, kind in desc.items():
        if kind == FLOAT or name == "model_quant_type" or not name.endswith(".weight"):
            continue
        base = name[: -len(".weight")]
        get = lambda n: safetensors_io.Reader(os.path.join(q_dir, q_files[n])).get(n)  # noqa: E731
        scale = get(base + ".weight_scale")
        ref = safetensors_io.Reader(os.path.join(fp32_dir, ref_files[name])).get(name)
        err = np.abs(dequantize_weight(get(name), scale, get(base + ".weight_offset")) - ref) / scale
        worst = max(worst, float(err.max()))
    return worst


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m recipes.tools.bench_quantize", description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a trained text run directory (its held-out conversations are scored)")
    ap.add_argument("--limit", type=int, default=None, help="held-out conversations scored (default: all)")
    ap.add_argument("--logit-prompts", type=int, default=16, help="held-out prompts for the logits cosine")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    os.environ.setdefault("GLOG_v", "3")
    from recipes.data import build_conversations
    from recipes.evaluate import evaluate
    from recipes.export import main as export_main
    from recipes.io.load import load_model

    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    quiet = lambda *a: None  # noqa: E731
    run = load_model(args.run, log=quiet)
    data = run.recipe.data
    prompts = run.tokenizer.encode_batch([c.prompt for c in build_conversations(data, "val")[: args.logit_prompts]])
    rows, ref_logits = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in ("fp32", "int8-weight", "w8a8"):
            out = os.path.join(tmp, scheme)
            argv_e = [args.run, "--out", out] + ([] if scheme == "fp32" else ["--quantize", scheme])
            if export_main(argv_e) != 0:
                raise SystemExit(f"export {scheme} failed")
            loaded = load_model(out, log=quiet)
            if scheme == "w8a8":
                n = simulate_dynamic_activations(loaded.model, loaded.model_cfg.num_hidden_layers)
                log(f"w8a8: per-token activation rounding at {n} projections / expert blocks")
            result = evaluate(loaded, limit=args.limit, data=data)
            logits = _logits(loaded.model, prompts)
            if ref_logits is None:
                ref_logits = logits
            cos = [float((a * b).sum(-1).mean() / 1) for a, b in
                   ((a / np.linalg.norm(a, axis=-1, keepdims=True), b / np.linalg.norm(b, axis=-1, keepdims=True))
                    for a, b in zip(ref_logits, logits))]
            rows[scheme] = {
                "exact_match": result["accuracy"], "n": result["num_examples"],
                "logits_cosine": float(np.mean(cos)), "bytes": _shard_bytes(out),
                "max_step_error": None if scheme == "fp32" else max_step_error(os.path.join(tmp, "fp32"), out),
            }
            log(f"{scheme}: {rows[scheme]}")
    result = {"run": args.run, "rows": rows}
    if args.json:
        print(json.dumps(result))
    else:
        print(table(result))
    return result


def table(result: dict) -> str:
    lines = ["| export | exact match | logits cosine vs fp32 | max weight error (steps) | shards |",
             "|---|---|---|---|---|"]
    for scheme, r in result["rows"].items():
        step = "—" if r["max_step_error"] is None else f"{r['max_step_error']:.3f}"
        lines.append(f"| {scheme} | {100 * r['exact_match']:.1f} % ({r['n']}) | {r['logits_cosine']:.6f} | {step} | "
                     f"{r['bytes'] / 1e6:.2f} MB |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
