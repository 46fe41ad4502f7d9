"""Build the FastAttention CPU kernel (ops/attention/csrc/fast_attention.cc) into a shared library.

    python -m ops.attention.build          # build if missing/stale, print the .so path
    python -m ops.attention.build --force  # rebuild

Thin wrapper over the shared kernel builder `ops._build` (`KERNELS["attention"]`), which every
aot kernel of ops/ uses: the library lands in `<repo>/build/ops_attention/fast_attention_<key>.so`,
`<key>` hashing the source, the flags, the compiler and (with -march=native) the CPU's feature flags.
`fast_cpu.py` calls `ensure_built()` lazily on first use. PANGU_ATTN_PORTABLE=1 (or
PANGU_OPS_PORTABLE=1) builds for the generic target instead of -march=native.
"""
import argparse
import shutil  # noqa: F401  (kept: tests patch shutil.which through this module)
import sys

from ops import _build

_KERNEL = _build.KERNELS["attention"]
SOURCE = _KERNEL.source
BUILD_DIR = _KERNEL.build_dir
GXX_MISSING = _KERNEL.gxx_missing
compile_flags = _build.compile_flags


def library_path():
    """Path of the .so for the current source + flags + machine (it may not exist yet)."""
    return _KERNEL.library_path()


def is_built() -> bool:
    """True when an up-to-date library exists (no compilation is attempted)."""
    return _KERNEL.is_built()


def ensure_built(force: bool = False, verbose: bool = False):
    """Compile the kernel if the up-to-date .so is missing; return its path."""
    return _KERNEL.ensure_built(force=force, verbose=verbose)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    try:
        path = ensure_built(force=args.force, verbose=True)
    except RuntimeError as e:
        print(str(e), file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
