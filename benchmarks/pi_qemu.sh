#!/usr/bin/env bash
# The device test subset on aarch64 (Raspberry Pi OS 64-bit is Debian bookworm arm64), emulated with
# qemu-user in a Debian bookworm arm64 root on this x86-64 machine. Not part of the CI run: the
# first run takes about an hour (debootstrap, then pip building pyaudio and installing numba,
# scipy, LiteRT, librosa under emulation); later runs reuse the root.
#
#   benchmarks/pi_qemu.sh [ROOT]        (as root; ROOT defaults to /var/tmp/edge-asd-pi/root)
#
# Steps, each skipped when already done:
#  1. qemu-user-static, binfmt-support, debootstrap from apt; binfmt_misc mounted and qemu-aarch64
#     registered, so the kernel runs arm64 binaries through qemu (the "F" flag: no qemu in the root);
#  2. debootstrap bookworm arm64 (minbase + python3, venv, gcc, portaudio19-dev);
#  3. the working tree (git ls-files: tracked and untracked, not ignored) copied to ROOT/opt/edge-asd
#     and installed there with the project's own scripts/setup (device and dev extras), as on a Pi;
#  4. a real model bundle made on this machine by the trainer (x86-64, TensorFlow) is copied in:
#     bundles are platform-independent (TFLite flatbuffers + JSON);
#  5. in the root, under emulation: pytest on the device subset (tests that need neither
#     TensorFlow nor a broker nor a sound card), and `edge-asd score` / `edge-asd run` with the bundle,
#     whose scores are compared with this machine's. The real recordings in ../shared/data, where
#     present, are mounted read-only where the tests look for them (/opt/shared/data).
# The summary goes to stdout between the markers "== summary ==" and "== end ==".
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${1:-/var/tmp/edge-asd-pi/root}
SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# The subset: pure device code, runnable without the `train` extra, a broker or ALSA.
TESTS=(tests/test_frontend.py tests/test_audio.py tests/test_alarm.py tests/test_config.py
       tests/test_sinks.py tests/test_cli_features.py tests/test_store_faults.py tests/test_calibration.py)
# ... less the tests in those files that train a bundle first (TensorFlow: the `train` extra).
DESELECT=(tests/test_store_faults.py::test_a_store_that_cannot_be_opened_does_not_stop_the_service
          tests/test_calibration.py::test_calibrate_cli_writes_threshold_and_keeps_history
          tests/test_calibration.py::test_calibrate_with_too_little_audio_is_a_clear_error)

if [ "$(id -u)" != 0 ]; then echo "pi_qemu: needs root (debootstrap, chroot, binfmt_misc)" >&2; exit 1; fi

# 1. qemu-user and binfmt_misc.
need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v update-binfmts >/dev/null || need+=(binfmt-support)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
    || { echo "pi_qemu: cannot mount binfmt_misc (no privilege in this container?)" >&2; exit 2; }
fi
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
if ! grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
  echo "pi_qemu: qemu-aarch64 is not registered with binfmt_misc" >&2; exit 2
fi

# 2. The Debian arm64 root (one stage: binfmt runs the arm64 maintainer scripts).
if [ ! -x "$ROOT/usr/bin/python3" ]; then
  mkdir -p "$ROOT"
  debootstrap --arch=arm64 --variant=minbase \
    --include=python3,python3-venv,python3-dev,portaudio19-dev,gcc,libc6-dev,ca-certificates,git \
    "$SUITE" "$ROOT" "$MIRROR"
fi
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# CAs added on this machine (e.g. for a TLS-inspecting proxy) are trusted in the root too; pip is
# pointed at the system bundle (PIP_CERT below) because it otherwise uses its own.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p "$ROOT/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  chroot "$ROOT" /usr/sbin/update-ca-certificates >/dev/null 2>&1 || true
fi
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
mountpoint -q "$ROOT/dev/pts" || mount --bind /dev/pts "$ROOT/dev/pts" 2>/dev/null || true
# The real recordings the tests read where present (../shared/data next to the repository), read-only.
data_src="$REPO/../shared/data"
if [ -d "$data_src" ]; then
  mkdir -p "$ROOT/opt/shared/data"
  mountpoint -q "$ROOT/opt/shared/data" || { mount --bind "$data_src" "$ROOT/opt/shared/data" && mount -o remount,bind,ro "$ROOT/opt/shared/data"; }
fi
trap 'umount "$ROOT/opt/shared/data" 2>/dev/null || true; umount "$ROOT/dev/pts" 2>/dev/null || true; umount "$ROOT/dev" 2>/dev/null || true; umount "$ROOT/proc" 2>/dev/null || true' EXIT
in_root() { chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
  PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"; }

# 3. The source, installed with scripts/setup (creates /opt/edge-asd/.venv).
mkdir -p "$ROOT/opt/edge-asd"
(cd "$REPO" && git ls-files -z -co --exclude-standard | while IFS= read -r -d "" f; do [ -f "$f" ] && printf "%s\0" "$f"; done | tar --null -T - -cf -) | tar -C "$ROOT/opt/edge-asd" -xf -
in_root /bin/sh -c "cd /opt/edge-asd && PIP_NO_CACHE_DIR=0 scripts/setup device dev" >&2

# 4. A real bundle and audio, made here.
work="$ROOT/opt/edge-asd-work"
mkdir -p "$work"
if [ ! -f "$work/bundle/bundle.json" ]; then
  (cd "$REPO" && TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python - "$work" <<'PY'
import shutil, sys
from pathlib import Path
import numpy as np
from edge_asd.audio import write_wav
from tests.bundle_factory import _machine_tone, make_bundle
work = Path(sys.argv[1])
bundle = make_bundle(work / "train")
shutil.copytree(bundle, work / "bundle")
shutil.rmtree(work / "train")
rng = np.random.default_rng(0)
write_wav(work / "audio30.wav", _machine_tone(rng, 30.0, 16000, anomaly=False)[:, None], 16000)
PY
  ) >&2
fi
host_score=$(cd "$REPO" && .venv/bin/python -m edge_asd score "$work/bundle" "$work/audio30.wav" 2>/dev/null | tail -1)

# 5. Under emulation.
t0=$(date +%s)
set +e
tests_out=$(in_root /bin/sh -c "cd /opt/edge-asd && .venv/bin/python -m pytest -q -rs -p no:cacheprovider ${TESTS[*]} ${DESELECT[*]/#/--deselect }" 2>&1)
tests_rc=$?
arm_score=$(in_root /bin/sh -c "cd /opt/edge-asd && .venv/bin/python -m edge_asd score /opt/edge-asd-work/bundle /opt/edge-asd-work/audio30.wav" 2>/dev/null | tail -1)
run_out=$(in_root /bin/sh -c "cd /opt/edge-asd && .venv/bin/python -m edge_asd run --bundle /opt/edge-asd-work/bundle \
  --input /opt/edge-asd-work/audio30.wav --fast --db /tmp/pi-qemu.sqlite --device-id qemu" 2>&1 >/dev/null | tail -1)
set -e
t1=$(date +%s)
echo "== summary =="
echo "machine in the root: $(in_root uname -m); $(in_root /opt/edge-asd/.venv/bin/python -c 'import platform, sys; print("Python", platform.python_version(), "glibc", platform.libc_ver()[1])')"
echo "installed: $(in_root /opt/edge-asd/.venv/bin/python -m pip list 2>/dev/null | grep -i -E '^(numpy|scipy|numba|llvmlite|ai-edge-litert|pyaudio|paho-mqtt|click) ' | tr -s ' ' | paste -sd ';' -)"
echo "pytest ${TESTS[*]} (less ${#DESELECT[@]} tests that train a bundle): exit $tests_rc"
echo "$tests_out" | grep -E "^(SKIPPED|FAILED|ERROR)|passed|failed" | cut -c1-220 | tail -20
echo "edge-asd score on aarch64: $arm_score"
echo "edge-asd score on x86-64:  $host_score"
echo "edge-asd run on aarch64: $run_out"
echo "emulated wall time of step 5: $((t1 - t0)) s"
echo "== end =="
exit $tests_rc
