"""CLI: python -m parallel_strategies {validate,simulate,search,layouts,launch,serve-plan,serve-sim,scale-plan} ..."""
from __future__ import annotations

import argparse
import sys

from . import scale_plan, serve_plan, serve_sim
from .report import result_json, result_table, search_json, search_table
from .shape import count_parameters, model_shape, resolve_config
from .strategy import load_hardware, load_strategy


def _cfg(st, args):
    model = dict(st.model)
    if getattr(args, "config_json", None):
        model = {"config_json": args.config_json}
    return resolve_config(model)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m parallel_strategies")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("validate", "simulate", "layouts"):
        p = sub.add_parser(name)
        p.add_argument("strategy", nargs="+", help="strategy file(s) or names in parallel_strategies/strategies/")
        p.add_argument("--config-json", help="plan a released config.json instead of the registry preset")
        if name in ("simulate",):
            p.add_argument("--json", action="store_true", help="print one JSON object")
    p = sub.add_parser("search")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="registry arch, e.g. pangu_pro_moe (with --preset)")
    which.add_argument("--config-json", help="plan a released config.json instead of a registry preset")
    p.add_argument("--preset", default="full")
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--hardware", default="ascend_910b")
    p.add_argument("--seq-length", type=int, default=4096)
    p.add_argument("--batch-tokens", type=int, default=4 * 1024 * 1024)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = sub.add_parser("launch")
    p.add_argument("--recipe", required=True)
    p.add_argument("--strategy", required=True)
    p.add_argument("--master-addr")
    p.add_argument("--master-port", type=int, default=8118)
    p.add_argument("--node-rank", type=int)
    p.add_argument("--hostfile")
    p.add_argument("--log-dir")
    p.add_argument("--sim-level", type=int, help="MS_SIMULATION_LEVEL dry run (Ascend)")
    p.add_argument("--dry-run", action="store_true", help="print the command(s) only")
    p.add_argument("--set", action="append", default=[], help="extra recipe overrides passed to the workers")
    p.add_argument("--resume", action="store_true",
                   help="continue the run from its newest checkpoint (saved under any layout: full tensors)")
    serve_plan.add_parser(sub)
    serve_sim.add_parser(sub)
    scale_plan.add_parser(sub)
    args = ap.parse_args(argv)

    try:
        if args.cmd in ("validate", "simulate", "layouts"):
            from .simulate import check_memory
            results = []
            for path in args.strategy:
                st = load_strategy(path)
                cfg = _cfg(st, args)
                if args.cmd == "layouts":
                    from .apply import parameter_layouts
                    for pl in parameter_layouts(st, cfg):
                        print(f"{pl.name:70s} {str(pl.shape):22s} {str(pl.logical):36s} "
                              f"{str(pl.tensor_map()):30s} stage {pl.stage}")
                    continue
                r = check_memory(st, cfg)
                if args.cmd == "validate":
                    print(f"{st.name}: ok ({r.memory.total / 1e9:.1f} / {r.memory_limit / 1e9:.0f} GB per device)")
                results.append((st, r, model_shape(cfg), count_parameters(cfg)))
            if args.cmd == "simulate":
                print(result_json(results) if args.json else result_table(results))
        elif args.cmd == "search":
            from .search import search
            model = {"config_json": args.config_json} if args.config_json else \
                {"arch": args.model, "preset": args.preset}
            cfg = resolve_config(model)
            hw = load_hardware(args.hardware)
            if args.devices % hw.devices_per_node:
                raise ValueError(f"devices: {args.devices} is not a whole number of {hw.devices_per_node}-device nodes")
            top, n = search(cfg, model, hw, args.devices // hw.devices_per_node, top=args.top,
                            seq_length=args.seq_length, batch_tokens=args.batch_tokens)
            if not top:
                raise ValueError(f"devices: none of the {n} valid layouts on {args.devices} x {hw.name} fits in "
                                 f"{hw.hbm_gb:g} GB per device, even with full recompute; search more devices")
            if args.json:
                print(search_json(top, n, model, hw, args.devices))
            else:
                print(f"{n} valid layouts for {args.model or args.config_json} on {args.devices} x {hw.name}; "
                      f"top {len(top)} by MFU:")
                print(search_table(top))
        elif args.cmd == "launch":
            from .launch import msrun_commands, run
            st = load_strategy(args.strategy)
            cmds = msrun_commands(st, args.recipe, master_addr=args.master_addr, master_port=args.master_port,
                                  log_dir=args.log_dir, node_rank=args.node_rank, hostfile=args.hostfile,
                                  sim_level=args.sim_level, extra_sets=tuple(args.set), resume=args.resume)
            if args.dry_run:
                for c in cmds:
                    print(c.shell)
                return 0
            return run(cmds)
        elif args.cmd == "serve-plan":
            return serve_plan.run(args)
        elif args.cmd == "serve-sim":
            return serve_sim.run(args)
        elif args.cmd == "scale-plan":
            return scale_plan.run(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
