"""Does ``pip install 'edge-asd[device]'`` resolve on a Raspberry Pi (64-bit Raspberry Pi OS)?

    python -m benchmarks.pi_readiness [--qemu] [--python-version 3.11] [--out PATH]

Raspberry Pi OS 64-bit (bookworm) is Debian arm64: aarch64, CPython 3.11, glibc 2.36. pip there
accepts wheels tagged ``manylinux_2_17`` (alias ``manylinux2014``) up to ``manylinux_2_36`` for
aarch64. This check asks pip on this machine the same question, with every device dependency of
edge-asd read from ``pyproject.toml`` (the base ``dependencies`` and the ``device`` extra):

- all of them but pyaudio, resolved together as one install would (transitive dependencies
  included), binary wheels only: ``pip download --only-binary=:all: --platform
  manylinux_2_17_aarch64 ... --platform manylinux_2_36_aarch64 --platform manylinux2014_aarch64
  --python-version 3.11 --implementation cp --abi cp311``; each file pip chose, its version, size
  and platform tag. Should the joint resolution fail, each requirement is tried alone so the one that
  has no aarch64 wheel is named;
- the same for 32-bit Raspberry Pi OS (armv7l), one requirement at a time: which have no wheel;
- pyaudio has no aarch64 wheel on PyPI and builds from source against PortAudio
  (``apt install portaudio19-dev python3-dev``, which ``scripts/setup`` does): that its sdist
  resolves (``pip download --no-binary=:all: --no-deps``).

With ``--qemu`` (as root), ``benchmarks/pi_qemu.sh`` also runs the device test subset under
qemu-user in a Debian bookworm arm64 root and its summary is written into the result; without it
the qemu section of an earlier result is kept. Writes ``results/pi_readiness.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "pi_readiness.md"
GLIBC_MINORS = range(17, 37)
"""manylinux_2_17 .. manylinux_2_36: what pip on glibc 2.36 (Debian bookworm) accepts for aarch64."""
PLATFORMS = [f"manylinux_2_{m}_aarch64" for m in GLIBC_MINORS] + ["manylinux2014_aarch64"]
ARMV7_PLATFORMS = [f"manylinux_2_{m}_armv7l" for m in GLIBC_MINORS] + ["manylinux2014_armv7l", "linux_armv7l"]
"""32-bit Raspberry Pi OS (armv7l), checked too, to say why the 64-bit OS is needed."""
FROM_SOURCE = {"pyaudio"}
"""Requirements that build from source on the Pi (no aarch64 wheel on PyPI)."""
QEMU_START, QEMU_END = "<!-- qemu:start -->", "<!-- qemu:end -->"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    return canonical(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0])


def device_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The base ``dependencies`` and the ``device`` extra of ``pyproject.toml``, as written there."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"]["device"])


def pip(*args: str, dest: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-d", str(dest), *args],
                          capture_output=True, text=True, timeout=1800)


def binary_args(python_version: str, platforms: list[str] = PLATFORMS) -> list[str]:
    abi = "cp" + python_version.replace(".", "")
    out = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp", "--abi", abi]
    for platform in platforms:
        out += ["--platform", platform]
    return out


def parse_file(path: Path) -> dict[str, str]:
    """Project, version and platform tag of a wheel or sdist file name."""
    name = path.name
    if name.endswith(".whl"):
        parts = name[:-4].split("-")
        return {"project": canonical(parts[0]), "version": parts[1], "tag": parts[-1]}
    stem = re.sub(r"\.(tar\.gz|zip)$", "", name)
    project, _, version = stem.rpartition("-")
    return {"project": canonical(project), "version": version, "tag": "sdist"}


def pip_error(run: subprocess.CompletedProcess) -> str:
    lines = [x.strip() for x in run.stderr.splitlines() if x.strip().startswith("ERROR")]
    return " ".join(lines[:2]) or (run.stderr.strip().splitlines() or ["pip failed"])[-1]


def check(python_version: str) -> dict:
    """Resolve the device requirements for aarch64; see the module docstring."""
    reqs = device_requirements()
    binary = [r for r in reqs if requirement_name(r) not in FROM_SOURCE]
    source = [r for r in reqs if requirement_name(r) in FROM_SOURCE]
    result: dict = {"requirements": reqs, "binary": binary, "source": source, "files": [], "failures": {}, "sdists": []}
    with tempfile.TemporaryDirectory(prefix="pi-readiness-") as tmp:
        dest = Path(tmp) / "wheels"
        log(f"pip download (aarch64, CPython {python_version}): {' '.join(binary)}")
        t0 = time.monotonic()
        run = pip(*binary_args(python_version), *binary, dest=dest)
        result["resolve_s"] = time.monotonic() - t0
        if run.returncode != 0:
            result["joint_error"] = pip_error(run)
            for req in binary:  # which one has no aarch64 wheel?
                alone = pip(*binary_args(python_version), req, dest=Path(tmp) / f"alone-{requirement_name(req)}")
                if alone.returncode != 0:
                    result["failures"][req] = pip_error(alone)
        for f in sorted(dest.glob("*")) if dest.is_dir() else []:
            result["files"].append({**parse_file(f), "file": f.name, "bytes": f.stat().st_size})
        for req in source:
            log(f"pip download --no-binary=:all: --no-deps {req}")
            sdest = Path(tmp) / f"sdist-{requirement_name(req)}"
            srun = pip("--no-binary=:all:", "--no-deps", req, dest=sdest)
            if srun.returncode != 0:
                result["failures"][req] = pip_error(srun)
            for f in sorted(sdest.glob("*")) if sdest.is_dir() else []:
                result["sdists"].append({**parse_file(f), "file": f.name, "bytes": f.stat().st_size, "requirement": req})
        log("the same requirements for 32-bit Raspberry Pi OS (armv7l), one by one")
        result["armv7_missing"] = [req for req in binary if pip(
            *binary_args(python_version, ARMV7_PLATFORMS), "--no-deps", req,
            dest=Path(tmp) / f"armv7-{requirement_name(req)}").returncode != 0]
    direct = {requirement_name(r): r for r in binary}
    for f in result["files"]:
        f["requirement"] = direct.get(f["project"], "")
    result["ok"] = not result["failures"] and "joint_error" not in result and all(
        any(f["project"] == requirement_name(r) for f in result["files"]) for r in binary) and len(result["sdists"]) == len(source)
    return result


def size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.0f} KB"


def run_qemu() -> str:
    """Run benchmarks/pi_qemu.sh; return its summary (or why it could not run) as markdown."""
    script = REPO / "benchmarks" / "pi_qemu.sh"
    if os.geteuid() != 0:
        return "Not run: `benchmarks/pi_qemu.sh` needs root (debootstrap, chroot, binfmt_misc)."
    log("benchmarks/pi_qemu.sh (first run: about an hour)")
    t0 = time.monotonic()
    run = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    minutes = (time.monotonic() - t0) / 60
    out = run.stdout
    summary = out.split("== summary ==", 1)[1].split("== end ==", 1)[0].strip() if "== summary ==" in out else ""
    if not summary:
        tail = "\n".join(run.stderr.strip().splitlines()[-15:])
        return f"`benchmarks/pi_qemu.sh` failed (exit {run.returncode}) before its tests ran:\n\n```\n{tail}\n```"
    return (f"`benchmarks/pi_qemu.sh` (exit {run.returncode}, {minutes:.0f} min), {dt.date.today().isoformat()}:\n\n"
            f"```\n{summary}\n```")


def markdown(r: dict, *, python_version: str, command: str, qemu: str) -> str:
    verdict = "**resolves**" if r["ok"] else "**does not resolve**"
    lines = [
        "# Raspberry Pi readiness: `python -m benchmarks.pi_readiness`",
        "",
        f"Measured {dt.date.today().isoformat()} by `{command}` against PyPI. Target: Raspberry Pi OS 64-bit "
        f"(bookworm: aarch64, CPython {python_version}, glibc 2.36), whose pip accepts `manylinux_2_17` "
        "(`manylinux2014`) to `manylinux_2_36` aarch64 wheels.",
        "",
        f"`pip install 'edge-asd[device]'` {verdict} there: every dependency but pyaudio as a binary wheel, "
        "pyaudio from its sdist (built against `portaudio19-dev`).",
        "",
        "## Binary wheels (resolved together, dependencies included)",
        "",
        f"`pip download --only-binary=:all: {' '.join('--platform ' + p for p in (PLATFORMS[0], '...', PLATFORMS[-2], PLATFORMS[-1]))} "
        f"--python-version {python_version} --implementation cp --abi cp{python_version.replace('.', '')} "
        + " ".join(f"'{x}'" for x in r["binary"]) + "`",
        "",
        "| requirement | project | version | file | size | platform tag |",
        "|---|---|---|---|---|---|",
    ]
    for f in r["files"]:
        req = f"`{f['requirement']}`" if f["requirement"] else "(a dependency)"
        lines.append(f"| {req} | {f['project']} | {f['version']} | `{f['file']}` | {size(f['bytes'])} | {f['tag']} |")
    total = sum(f["bytes"] for f in r["files"])
    lines += ["", f"{len(r['files'])} wheels, {size(total)} to download; resolved in {r['resolve_s']:.0f} s.", ""]
    if "joint_error" in r:
        lines += [f"Joint resolution failed: {r['joint_error']}", ""]
    lines += ["## Built from source on the Pi", "", "| requirement | sdist | size |", "|---|---|---|"]
    for s in r["sdists"]:
        lines.append(f"| `{s['requirement']}` | `{s['file']}` | {size(s['bytes'])} |")
    lines += ["", "Needs `sudo apt install portaudio19-dev python3-dev` (and gcc) first; `scripts/setup` installs them.", ""]
    if r["failures"]:
        lines += ["## Failures", "", "| requirement | pip says |", "|---|---|"]
        lines += [f"| `{req}` | {msg.replace('|', '/')} |" for req, msg in r["failures"].items()]
        lines.append("")
    missing = r.get("armv7_missing", [])
    lines += ["## 32-bit Raspberry Pi OS (armv7l)", "",
              ("No PyPI wheel for armv7l (manylinux_2_17..2_36, manylinux2014, linux): " + ", ".join(f"`{m}`" for m in missing)
               + ". The 32-bit OS would have to build them from source; use the 64-bit OS.")
              if missing else "Every binary requirement has an armv7l wheel too.", ""]
    lines += ["## The device tests on aarch64 (qemu-user)", "",
              "`benchmarks/pi_qemu.sh`: the device test subset and `edge-asd run` / `edge-asd score` with a real int8 "
              "bundle, in a Debian bookworm arm64 root under qemu-user, installed by `scripts/setup device dev` as on a Pi. "
              "Emulated times say nothing about a Pi's speed. qemu-user can deadlock a child forked from a process whose other "
              "threads are running (a limitation of the emulator, not of aarch64); a test that hangs there is not a finding "
              "about the device.", "", QEMU_START, qemu, QEMU_END, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pi_readiness", description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", default="3.11", help="target CPython (default 3.11, Raspberry Pi OS bookworm's)")
    parser.add_argument("--qemu", action="store_true", help="also run benchmarks/pi_qemu.sh (root; about an hour the first time)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = check(args.python_version)
    if args.qemu:
        qemu = run_qemu()
    elif args.out.is_file() and QEMU_START in (old := args.out.read_text()):
        qemu = old.split(QEMU_START, 1)[1].split(QEMU_END, 1)[0].strip()
    else:
        qemu = "Not run; `python -m benchmarks.pi_readiness --qemu` (as root) runs it."
    command = "python -m benchmarks.pi_readiness" + (" --qemu" if args.qemu else "") + (
        f" --python-version {args.python_version}" if args.python_version != "3.11" else "")
    text = markdown(result, python_version=args.python_version, command=command, qemu=qemu)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
