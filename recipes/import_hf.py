"""Import a serving-layout (Hub) directory as a checkpoint of ours:
`python -m recipes.import_hf HF_DIR --out DIR [--overwrite]`.

The weights go through `recipes.export.import_hf` (config.json -> our config dataclass, convert.from_hf,
strict about missing / unexpected / mis-shaped tensors) and are written as a run-like directory
(recipes.weights): DIR/config.yaml (model: arch + every config field; data.tokenizer_model: the copied
tokenizer.model when the export has one) + DIR/checkpoints/step_00000000/. Use DIR as `init_from` of a
recipe, or with recipes.evaluate / recipes.export.

MindVL (model_type qwen2_5_vl): the tokenizer files must describe MindVL's ByteTokenizer
(mindvl.convert.load_tokenizer; any other tokenizer is refused in one line), preprocessor_config.json is
copied into DIR (with its resolution-search record; exporting DIR again writes the same file) and its
min/max_pixels become the run's data budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys

os.environ.setdefault("GLOG_v", "3")

from recipes import weights  # noqa: E402
from recipes.export import adapter, arch_of_config, import_hf  # noqa: E402
from recipes.cli import run_command


def import_to_run(hf_dir: str, out: str, overwrite: bool = False, log=print) -> str:
    """Write HF_DIR's weights as OUT/checkpoints/step_00000000 (+ OUT/config.yaml); return the step dir."""
    import yaml

    from recipes.config import resolve

    weights.prepare_out(out, overwrite, create=False)
    cfg, state = import_hf(hf_dir)
    arch = arch_of_config(cfg)
    weights.prepare_out(out, overwrite)
    raw = {"description": f"imported from {os.path.abspath(hf_dir)}",
           "model": {"arch": arch, "preset": "tiny", **_plain(dataclasses.asdict(cfg))},
           "run": {"root": os.path.dirname(os.path.abspath(out)), "name": os.path.basename(os.path.normpath(out))}}
    tokenizer = os.path.join(hf_dir, "tokenizer.model")
    if os.path.isfile(tokenizer):
        shutil.copyfile(tokenizer, os.path.join(out, "tokenizer.model"))
        raw["data"] = {"tokenizer_model": os.path.abspath(os.path.join(out, "tokenizer.model"))}
    ad = adapter(arch)
    if ad.import_assets is not None:
        data = ad.import_assets(hf_dir, out, cfg)
        if data:
            raw["data"] = {**raw.get("data", {}), **data}
    resolve(dict(raw))  # the written config must load back
    with open(os.path.join(out, "config.yaml"), "w") as f:
        yaml.safe_dump(raw, f, sort_keys=False)
    path = weights.write_run_checkpoint(out, 0, state, {"imported_from": os.path.abspath(hf_dir)}, None)
    log(f"imported {arch} ({len(state)} tensors) from {hf_dir} -> {path}")
    return path


def _plain(value):
    """Tuples (e.g. MindVL's fullatt_block_indexes) as lists, so yaml.safe_dump can write them."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


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
