"""The front end's numba kernels compiled ahead of time, so the device process need not load LLVM.

numba compiles :mod:`edge_asd.frontend.kernels` just in time, which costs every process that
computes features numba's compiler: the LLVM library alone maps ~100 MB of the device process
(``benchmarks/import_memory.py``), though the kernels are three loops that never change after
installation. ``python -m edge_asd.frontend.aot`` (run by ``scripts/setup`` and
``systemd/install.sh``) has numba compile the same kernels, from the same source, ahead of time
(``numba.pycc``) into a small extension module; :func:`frontend_kernels` loads it without importing
numba, and falls back to the JIT kernels when it is absent or stale.

The module's name carries a fingerprint of everything it was built from (the kernels' source, the
numba and numpy versions, the Python ABI, the machine and its CPU flags): after any of them changes,
the old module is simply not found and the JIT kernels run until it is rebuilt. Set
``EDGE_ASD_KERNELS=jit`` to use the JIT kernels regardless (troubleshooting, comparisons).

The compiled code is numba's own, from the same Python source; like the JIT it uses fast math
for the accumulating kernels, and it targets the CPU of the machine that builds it, as the JIT does.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np

__all__ = ["FrontendKernels", "build", "compiled_kernels", "compiled_path", "fingerprint", "frontend_kernels", "jit_kernels",
           "load_compiled"]

KERNELS_SOURCE = Path(__file__).with_name("kernels.py")
DEFAULT_DIR = Path(__file__).with_name("_compiled")
"""Where the compiled module goes by default: inside the installed package, beside its source."""

# Exported name -> (kernel, numba signature). Arrays as the streaming front end hands them over:
# audio blocks are float32 or float64 slices of any layout, everything else is a C-contiguous
# buffer it allocated (numpy >= 2 transforms float32 frames to complex64; complex128 covers others).
_EXPORTS = {
    "downmix_into_f4": ("downmix_into", "void(f4[:, :], f4[::1], i8)"),
    "downmix_into_f8": ("downmix_into", "void(f8[:, :], f4[::1], i8)"),
    "frame_windowed": ("frame_windowed", "void(f4[::1], i8, i8, f4[::1], f4[:, ::1])"),
    "banks_power_c8": ("banks_power", "void(c8[:, ::1], i8, i8[::1], i8[::1], f4[::1], f8, f8[::1], f4[:, ::1], i8)"),
    "banks_power_c16": ("banks_power", "void(c16[:, ::1], i8, i8[::1], i8[::1], f4[::1], f8, f8[::1], f4[:, ::1], i8)"),
}


def _cpu_flags() -> str:
    """The CPU feature flags the kernel reports (x86 ``flags``, arm ``Features``): code built for
    this CPU must not run on one without them (an SD card image moved to another board)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return ""


@functools.lru_cache(maxsize=1)
def fingerprint() -> str:
    """12 hex digits identifying what a compiled module must have been built from (computed once
    per process: the path, the loader and the build all ask for it)."""
    h = hashlib.sha256(KERNELS_SOURCE.read_bytes())
    for part in (
        importlib.metadata.version("numba"),
        np.__version__,
        sys.implementation.cache_tag,
        platform.machine(),
        _cpu_flags(),
        repr(sorted(_EXPORTS.items())),
    ):
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:12]


def _module_name() -> str:
    return f"_kernels_{fingerprint()}"


def compiled_path(directory: str | os.PathLike | None = None) -> Path:
    """Path the compiled module for this installation has (or would have) in ``directory``."""
    folder = Path(directory) if directory is not None else DEFAULT_DIR
    return folder / (_module_name() + importlib.machinery.EXTENSION_SUFFIXES[0])


def load_compiled(directory: str | os.PathLike | None = None) -> ModuleType | None:
    """The compiled module matching this installation, or ``None`` when there is none."""
    path = compiled_path(directory)
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(_module_name(), path)
    if spec is None or spec.loader is None:
        return None
    try:
        module = importlib.util.module_from_spec(spec)  # dlopen happens here
        spec.loader.exec_module(module)
    except (ImportError, OSError) as exc:  # e.g. a truncated file: the JIT kernels still work
        logging.getLogger(__name__).warning("%s does not load (%s); using the numba JIT kernels. Rebuild it with "
                                            "python -m edge_asd.frontend.aot", path, exc)
        return None
    return module


@dataclass(frozen=True)
class FrontendKernels:
    """The three kernels of :mod:`edge_asd.frontend.kernels`, and where their code came from."""

    downmix_into: Callable[..., None]
    frame_windowed: Callable[..., None]
    banks_power: Callable[..., None]
    source: str
    """``"ahead-of-time (<path>)"`` or ``"numba JIT"``."""


def _from_compiled(module: ModuleType, path: Path) -> FrontendKernels:
    downmix_f4, downmix_f8 = module.downmix_into_f4, module.downmix_into_f8
    banks_c8, banks_c16 = module.banks_power_c8, module.banks_power_c16

    def downmix_into(block, out, offset):
        if block.dtype == np.float32:
            downmix_f4(block, out, offset)
        else:  # the JIT kernel would compile a version for the dtype; averaging in float64 is as exact
            downmix_f8(block if block.dtype == np.float64 else block.astype(np.float64), out, offset)

    def banks_power(spec, *args):
        (banks_c8 if spec.dtype == np.complex64 else banks_c16)(spec, *args)

    return FrontendKernels(downmix_into, module.frame_windowed, banks_power, f"ahead-of-time ({path})")


def compiled_kernels(directory: str | os.PathLike | None = None) -> FrontendKernels | None:
    """The kernels of the compiled module in ``directory`` matching this installation, if any."""
    module = load_compiled(directory)
    return None if module is None else _from_compiled(module, compiled_path(directory))


def jit_kernels() -> FrontendKernels:
    """The kernels as numba compiles them just in time (imports numba and LLVM)."""
    from edge_asd.frontend import kernels

    return FrontendKernels(kernels.downmix_into, kernels.frame_windowed, kernels.banks_power, "numba JIT")


@functools.lru_cache(maxsize=1)
def frontend_kernels() -> FrontendKernels:
    """The front end's kernels: the ahead-of-time module when it matches, else numba's JIT.

    Loaded once per process. Importing numba (and LLVM) happens only on the JIT path.
    """
    compiled = compiled_kernels() if os.environ.get("EDGE_ASD_KERNELS", "auto") != "jit" else None
    return compiled if compiled is not None else jit_kernels()


def build(directory: str | os.PathLike | None = None) -> Path:
    """Compile the kernels ahead of time into ``directory`` (default: :data:`DEFAULT_DIR`).

    Needs numba and a C compiler (``gcc``, as pyaudio does). Older modules of other fingerprints
    in the directory are removed. Returns the module's path.
    """
    import llvmlite.binding as llvm
    import numba.pycc.compiler as pycc_compiler
    from numba.core.cpu_options import FastMathOptions
    from numba.pycc import CC

    from edge_asd.frontend import kernels

    target = compiled_path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    cc = CC(_module_name())
    cc.verbose = False
    cc.target_cpu = llvm.get_host_cpu_name()
    for name, (kernel, signature) in _EXPORTS.items():
        cc.export(name, signature)(getattr(kernels, kernel).py_func)

    # pycc compiles every export with one set of flags, without fast math; the JIT kernels that
    # accumulate use it (and it changes nothing for the one that only multiplies).
    plain_flags = pycc_compiler.Flags

    class FastMathFlags(plain_flags):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.fastmath = FastMathOptions(True)

    with tempfile.TemporaryDirectory(prefix="edge-asd-aot-", dir=target.parent) as scratch:
        cc.output_dir = scratch
        pycc_compiler.Flags = FastMathFlags
        try:
            cc.compile()
        finally:
            pycc_compiler.Flags = plain_flags
        built = Path(scratch) / target.name
        os.replace(built, target)  # atomic: a running process never sees half a module
    for old in target.parent.glob("_kernels_*"):
        if old != target and old.is_file():
            old.unlink()
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_asd.frontend.aot", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help=f"output folder (default {DEFAULT_DIR})")
    parser.add_argument("--check", action="store_true", help="only say whether a matching compiled module exists (exit 1 if not)")
    args = parser.parse_args(argv)
    path = compiled_path(args.dir)
    if args.check:
        print(f"{path}: {'present' if path.is_file() else 'absent (the front end uses the numba JIT kernels)'}")
        return 0 if path.is_file() else 1
    try:
        path = build(args.dir)
    except Exception as exc:  # numba's and distutils' errors have no common type
        print(f"edge_asd.frontend.aot: compiling the front end kernels failed ({type(exc).__name__}: {exc}); "
              "the front end will use the numba JIT kernels (more memory). Is a C compiler (gcc) installed?", file=sys.stderr)
        return 1
    module = load_compiled(args.dir)
    if module is None:
        print(f"edge_asd.frontend.aot: {path} was written but does not load", file=sys.stderr)
        return 1
    print(f"compiled the front end kernels ahead of time: {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
