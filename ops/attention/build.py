"""Build the FastAttention CPU kernel (ops/attention/csrc/fast_attention.cc) into a shared library.

    python -m ops.attention.build          # build if missing/stale, print the .so path
    python -m ops.attention.build --force  # rebuild

The library lands in `<repo>/build/ops_attention/fast_attention_<key>.so`, where `<key>` hashes the
source, the compiler flags, the compiler version and (with -march=native) the CPU's feature flags, so
a stale or foreign build is never loaded. `fast_cpu.py` calls `ensure_built()` lazily on first use.

Flags: -O3 plus `-march=native` by default: the kernel is always compiled on the machine that runs it
(setup step or first use), so native SIMD is safe. Set PANGU_ATTN_PORTABLE=1 to build for the
generic target instead (e.g. a build/ directory shared between different machines).
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).resolve().parent / "csrc" / "fast_attention.cc"
BUILD_DIR = REPO_ROOT / "build" / "ops_attention"
GXX_MISSING = "g++ not found: install build-essential (apt-get install g++) or set attention_impl=reference"


def compile_flags() -> list:
    """g++ flags for the kernel (C++17, OpenMP, FMA contraction; native SIMD unless portable)."""
    flags = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=fast"]
    if os.environ.get("PANGU_ATTN_PORTABLE", "0") in ("", "0"):
        flags.append("-march=native")
    return flags


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return ""


def _gxx() -> str:
    gxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")
    if gxx is None:
        raise RuntimeError(GXX_MISSING)
    return gxx


def library_path() -> Path:
    """Path of the .so for the current source + flags + machine (it may not exist yet)."""
    flags = compile_flags()
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(" ".join(flags).encode())
    if "-march=native" in flags:
        h.update(_cpu_flags().encode())
    gxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++") or ""
    h.update(gxx.encode())
    return BUILD_DIR / f"fast_attention_{h.hexdigest()[:16]}.so"


def is_built() -> bool:
    """True when an up-to-date library exists (no compilation is attempted)."""
    return library_path().is_file()


def ensure_built(force: bool = False, verbose: bool = False) -> Path:
    """Compile the kernel if the up-to-date .so is missing; return its path.

    Compiles into a temporary file and renames it into place, so concurrent builders (parallel test
    processes) never load a half-written library.
    """
    out = library_path()
    if out.is_file() and not force:
        return out
    gxx = _gxx()
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=BUILD_DIR)
    os.close(fd)
    cmd = [gxx, *compile_flags(), str(SOURCE), "-o", tmp]
    if verbose:
        print(" ".join(cmd), file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"building {SOURCE.name} failed ({' '.join(cmd)}):\n{proc.stderr}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, out)
    return out


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
