"""One builder for every CPU aot kernel of ops/ (FastAttention, RMSNorm, SwiGLU, RoPE, grouped matmul, MoE permutation).

    python -m ops._build                 # build every kernel that is missing/stale, print the paths
    python -m ops._build rms_norm rope   # only these
    python -m ops._build --force         # rebuild

A kernel is one C++ source (plus the shared headers in ops/csrc/) compiled into
`<repo>/build/ops_<name>/<stem>_<key>.so`, where `<key>` hashes the sources, the compiler flags, the
compiler path, the kernel's extra link flags and (with -march=native) the CPU's feature flags, so a
stale or foreign build is never loaded. Each op's fast path calls `KERNELS[name].ensure_built()` on first import.

Flags: -O3 plus `-march=native` by default (kernels are compiled on the machine that runs them, at
setup or first use). PANGU_OPS_PORTABLE=1 (or the older PANGU_ATTN_PORTABLE=1) builds for the generic
target instead, e.g. for a build/ directory shared between different machines.

Link flags: a kernel that calls into a library passes `link=` a function returning extra g++ flags
(e.g. `mindspore_lib("libdnnl.so.3", "dnnl_sgemm")`: link a library shipped in the mindspore wheel);
it raises RuntimeError with a one-line "problem; fix" message when the library is unusable.
"""
import argparse
import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

OPS_ROOT = Path(__file__).resolve().parent
REPO_ROOT = OPS_ROOT.parent
INCLUDE_DIR = OPS_ROOT / "csrc"
GXX_MISSING = ("g++ not found: install build-essential (apt-get install g++) or set "
               "ops_impl=reference (attention_impl=reference for attention only)")


def portable() -> bool:
    """True when PANGU_OPS_PORTABLE / PANGU_ATTN_PORTABLE ask for a generic-target build."""
    return any(os.environ.get(k, "0") not in ("", "0")
               for k in ("PANGU_OPS_PORTABLE", "PANGU_ATTN_PORTABLE"))


def compile_flags() -> list:
    """g++ flags shared by all kernels (C++17, OpenMP, FMA contraction; native SIMD unless portable)."""
    flags = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=fast",
             "-fno-math-errno"]  # no kernel reads errno; lets sqrt vectorise
    if not portable():
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


def _gxx_path() -> str:
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++") or ""


def mindspore_lib(soname: str, symbol: str):
    """`link=` for a kernel calling `symbol` from `soname` in the mindspore wheel's lib/ directory:
    returns a function giving the g++ flags (-L, -l:, rpath), raising RuntimeError if unusable."""

    def flags() -> list:
        spec = importlib.util.find_spec("mindspore")
        lib_dir = Path(spec.origin).parent / "lib" if spec and spec.origin else None
        path = lib_dir / soname if lib_dir else None
        if path is None or not path.is_file():
            raise RuntimeError(f"{soname} not found in mindspore's lib directory ({lib_dir}); "
                               "reinstall the mindspore CPU wheel or use impl=reference")
        try:
            getattr(ctypes.CDLL(str(path)), symbol)
        except (OSError, AttributeError) as exc:
            raise RuntimeError(f"{path} does not provide {symbol} ({exc}); install a mindspore "
                               "wheel whose bundled library exports it or use impl=reference") from None
        return [f"-L{lib_dir}", f"-l:{soname}", f"-Wl,-rpath,{lib_dir}"]

    return flags


class Kernel:
    """One aot kernel library: `source` (.cc) -> build/ops_<name>/<source stem>_<key>.so.

    `link`: optional zero-argument function returning extra g++ link flags (see mindspore_lib)."""

    def __init__(self, name: str, source: Path, gxx_missing: str = GXX_MISSING, link=None):
        self.name = name
        self.source = Path(source)
        self.build_dir = REPO_ROOT / "build" / f"ops_{name}"
        self.gxx_missing = gxx_missing
        self.link = link

    def link_flags(self) -> list:
        """Extra link flags of this kernel (RuntimeError when its library is unusable)."""
        return list(self.link()) if self.link else []

    def _headers(self):
        return sorted(INCLUDE_DIR.glob("*.h")) if INCLUDE_DIR.is_dir() else []

    def library_path(self) -> Path:
        """Path of the .so for the current sources + flags + machine (it may not exist yet)."""
        flags = compile_flags()
        h = hashlib.sha256(self.source.read_bytes())
        for header in self._headers():          # shared headers only matter to kernels using them
            if f'#include "{header.name}"' in self.source.read_text(encoding="utf-8"):
                h.update(header.read_bytes())
        h.update(" ".join(flags + self.link_flags()).encode())
        if "-march=native" in flags:
            h.update(_cpu_flags().encode())
        h.update(_gxx_path().encode())
        return self.build_dir / f"{self.source.stem}_{h.hexdigest()[:16]}.so"

    def is_built(self) -> bool:
        """True when an up-to-date library exists (no compilation is attempted)."""
        try:
            return self.library_path().is_file()
        except RuntimeError:                    # its link library is unusable: cannot be built
            return False

    def ensure_built(self, force: bool = False, verbose: bool = False) -> Path:
        """Compile if the up-to-date .so is missing; return its path.

        Compiles into a temporary file and renames it into place, so concurrent builders (parallel
        test processes) never load a half-written library.
        """
        out = self.library_path()
        if out.is_file() and not force:
            return out
        gxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")
        if gxx is None:
            raise RuntimeError(self.gxx_missing)
        self.build_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=self.build_dir)
        os.close(fd)
        cmd = [gxx, *compile_flags(), f"-I{INCLUDE_DIR}", str(self.source), "-o", tmp,
               *self.link_flags()]
        if verbose:
            print(" ".join(cmd), file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            os.unlink(tmp)
            raise RuntimeError(f"building {self.source.name} failed ({' '.join(cmd)}):\n{proc.stderr}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
        return out


KERNELS = {
    "attention": Kernel("attention", OPS_ROOT / "attention" / "csrc" / "fast_attention.cc"),
    "rms_norm": Kernel("rms_norm", OPS_ROOT / "rms_norm" / "csrc" / "rms_norm.cc"),
    "swiglu": Kernel("swiglu", OPS_ROOT / "swiglu" / "csrc" / "swiglu.cc"),
    "rope": Kernel("rope", OPS_ROOT / "rope" / "csrc" / "rope.cc"),
    "adamw": Kernel("adamw", OPS_ROOT / "adamw" / "csrc" / "adamw.cc"),
    "moe": Kernel("moe", OPS_ROOT / "moe" / "csrc" / "moe_permute.cc"),
    "grouped_matmul": Kernel("grouped_matmul",
                             OPS_ROOT / "grouped_matmul" / "csrc" / "grouped_matmul.cc",
                             link=mindspore_lib("libdnnl.so.3", "dnnl_sgemm")),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"kernels to build (default all: {list(KERNELS)})")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in KERNELS]
    if unknown:
        print(f"unknown kernel(s) {unknown}; choose from {list(KERNELS)}", file=sys.stderr)
        return 2
    status = 0
    for name in args.names or KERNELS:
        try:
            print(KERNELS[name].ensure_built(force=args.force, verbose=True))
        except RuntimeError as e:
            print(str(e), file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
