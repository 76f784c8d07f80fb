#!/usr/bin/env bash
# Install edge-asd as a systemd service on a Raspberry-Pi-class device (Debian / Raspberry Pi OS).
#
#   sudo systemd/install.sh [--profile firmware_config/mimii-8ch.toml] [--bundle path/to/bundle] [--no-start]
#
# Creates the unprivileged user 'edge-asd' (in the 'audio' group), a virtual environment in
# /opt/edge-asd/venv with edge-asd[device] (no TensorFlow), /etc/edge-asd/edge-asd.toml (kept if it
# exists), copies the bundle to /var/lib/edge-asd/bundle, installs and enables the unit.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
profile="$repo/firmware_config/mimii-8ch.toml"
bundle=""
start=1
prefix=/opt/edge-asd

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --bundle) bundle="$2"; shift 2 ;;
        --no-start) start=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

if [[ $EUID -ne 0 ]]; then
    echo "install.sh: run as root (sudo)" >&2
    exit 1
fi
[[ -f "$profile" ]] || { echo "install.sh: profile $profile not found" >&2; exit 1; }
[[ -z "$bundle" || -f "$bundle/bundle.json" ]] || { echo "install.sh: $bundle is not a model bundle" >&2; exit 1; }

# 1. The service user: no login, no home, allowed to open /dev/snd.
if ! id -u edge-asd >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /var/lib/edge-asd --shell /usr/sbin/nologin edge-asd
fi
usermod -a -G audio edge-asd

# 2. The software, in its own virtual environment (device extras only: LiteRT, pyaudio, paho).
python3 -m venv "$prefix/venv"
"$prefix/venv/bin/pip" install "pip==26.3"
# The versions the test suite passed with (constraints.txt), not whatever is newest today.
"$prefix/venv/bin/pip" install -c "$repo/constraints.txt" "$repo[device]"
# The front end's numba kernels compiled ahead of time into the installed package (needs gcc): the
# service then never loads numba's LLVM compiler, ~130 MB less memory (benchmarks/results/import_memory.md).
aot_ok=1
"$prefix/venv/bin/python" -m edge_asd.frontend.aot || aot_ok=0

# 3. Configuration and data.
install -d -m 0750 -o root -g edge-asd /etc/edge-asd
if [[ ! -f /etc/edge-asd/edge-asd.toml ]]; then
    install -m 0640 -o root -g edge-asd "$profile" /etc/edge-asd/edge-asd.toml
else
    echo "keeping existing /etc/edge-asd/edge-asd.toml"
fi
install -d -m 0750 -o edge-asd -g edge-asd /var/lib/edge-asd /var/lib/edge-asd/numba-cache
if [[ -n "$bundle" ]]; then
    rm -rf /var/lib/edge-asd/bundle.new
    cp -r "$bundle" /var/lib/edge-asd/bundle.new
    chown -R edge-asd:edge-asd /var/lib/edge-asd/bundle.new
    rm -rf /var/lib/edge-asd/bundle
    mv /var/lib/edge-asd/bundle.new /var/lib/edge-asd/bundle
fi

# Without the ahead-of-time kernels, compile the JIT kernels into the service's cache now, as the
# service user: the service's first start then loads them instead of compiling, which would raise
# its peak memory by ~15 MB and delay READY by seconds.
if [[ $aot_ok -eq 0 && -f /var/lib/edge-asd/bundle/bundle.json ]]; then
    runuser -u edge-asd -- env NUMBA_CACHE_DIR=/var/lib/edge-asd/numba-cache \
        "$prefix/venv/bin/edge-asd" bench /var/lib/edge-asd/bundle --seconds 2 --repeats 1 >/dev/null \
        || echo "install.sh: warming the numba cache failed; the service will compile its kernels at first start" >&2
fi

# 4. The unit.
install -m 0644 "$here/edge-asd.service" /etc/systemd/system/edge-asd.service
systemctl daemon-reload
systemctl enable edge-asd.service
if [[ $start -eq 1 ]]; then
    systemctl restart edge-asd.service
    systemctl --no-pager status edge-asd.service || true
fi
cat <<MSG
edge-asd installed.
  logs:        journalctl -u edge-asd -f
  status:      $prefix/venv/bin/edge-asd status     (exit code 0 = running; --json for scripts)
  calibrate:   sudo -u edge-asd $prefix/venv/bin/edge-asd calibrate /var/lib/edge-asd/bundle --config /etc/edge-asd/edge-asd.toml --seconds 600
               then: sudo systemctl restart edge-asd
MSG
