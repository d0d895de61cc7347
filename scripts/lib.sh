# shellcheck shell=bash
# Shared helpers for scripts/dev, scripts/test, scripts/lock and scripts/ensure-localhost-resolution.
# Source it; do not run it.
#
# Environment knobs:
#   COFFER_VENV              venv to create/reuse (default: <repo>/.venv)
#   COFFER_PYTHON            interpreter to build the venv from (default: first Python >= 3.11 on PATH)
#   COFFER_LOCALHOST_NAMES   extra host names that must resolve (only matters for the /etc/hosts fallback)
#   CI                       set => never prompt; fix what can be fixed as root, else fail

COFFER_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COFFER_VENV="$(realpath -m "${COFFER_VENV:-$COFFER_ROOT/.venv}")"

log() { printf '[coffer] %s\n' "$*" >&2; }
die() { printf '[coffer] error: %s\n' "$*" >&2; exit 1; }

# Interactive = a person can answer a question: stdin is a terminal and we are not in CI.
is_interactive() { [[ -t 0 && -z "${CI:-}" ]]; }

# Prints the command prefix that gives root ("" when already root, "sudo" / "sudo -n" otherwise).
# Returns 1 when root cannot be had without asking for a password we cannot ask for.
root_prefix() {
    if [[ "$(id -u)" -eq 0 ]]; then
        printf ''
    elif command -v sudo >/dev/null 2>&1; then
        if is_interactive; then
            printf 'sudo'
        elif sudo -n true 2>/dev/null; then
            printf 'sudo -n'
        else
            return 1
        fi
    else
        return 1
    fi
}

# Runs a command as root (directly, or through sudo). Fails if that is impossible.
as_root() {
    local prefix
    prefix="$(root_prefix)" || return 1
    # shellcheck disable=SC2086  # prefix is "", "sudo" or "sudo -n"
    $prefix "$@"
}

# ---------------------------------------------------------------------------------------------
# apt
# ---------------------------------------------------------------------------------------------
_COFFER_APT_UPDATED="${_COFFER_APT_UPDATED:-0}"

apt_is_installed() {
    dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'
}

# ensure_apt_packages pkg...
#   Installs the Debian packages that are missing (checked with dpkg -s). `apt-get update` runs
#   at most once per script run, and only when something is missing. Non-interactive.
ensure_apt_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        apt_is_installed "$pkg" || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0

    if ! command -v apt-get >/dev/null 2>&1; then
        log "missing system packages: ${missing[*]} (no apt-get here: install them with your package manager)"
        return 1
    fi
    local prefix
    if ! prefix="$(root_prefix)"; then
        log "missing Debian packages: ${missing[*]}"
        log "install them as root, then re-run:"
        log "    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}"
        return 1
    fi
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300)
    log "installing Debian packages: ${missing[*]}"
    if [[ "$_COFFER_APT_UPDATED" != 1 ]]; then
        # shellcheck disable=SC2086
        $prefix "${apt[@]}" update >&2 || return 1
        _COFFER_APT_UPDATED=1
        export _COFFER_APT_UPDATED
    fi
    # shellcheck disable=SC2086
    $prefix "${apt[@]}" install --no-install-recommends "${missing[@]}" >&2
}

# ---------------------------------------------------------------------------------------------
# *.localhost name resolution
# ---------------------------------------------------------------------------------------------
_coffer_names_resolve() {
    local name
    for name in "$@"; do
        getent hosts "$name" >/dev/null 2>&1 || return 1
    done
}

_coffer_manual_instructions() {
    cat >&2 <<EOF
[coffer] Coffer serves one vault per host name (e.g. https://dev.localhost:8443), so *.localhost
[coffer] must resolve to this machine, and on this machine it does not. Fix it as root with either:
[coffer]   apt-get install libnss-myhostname
[coffer]   # then make sure the hosts: line of /etc/nsswitch.conf contains myhostname, e.g.
[coffer]   #   hosts:          files myhostname dns
[coffer] or, for individual names, add to /etc/hosts:
EOF
    local name
    for name in "$@"; do printf '[coffer]   127.0.0.1 %s\n' "$name" >&2; done
    printf '[coffer] check with: getent hosts %s\n' "$1" >&2
}

# Adds `myhostname` to the hosts: line of /etc/nsswitch.conf if it is not there yet.
_coffer_nsswitch_add_myhostname() {
    local conf=/etc/nsswitch.conf
    if [[ -f $conf ]] && grep -Eq '^hosts:.*[[:space:]]myhostname([[:space:]]|$)' "$conf"; then
        return 0
    fi
    log "adding myhostname to the hosts: line of $conf"
    if [[ -f $conf ]] && grep -Eq '^hosts:' "$conf"; then
        # after `files` if present (so /etc/hosts still wins), else first.
        if grep -Eq '^hosts:.*[[:space:]]files([[:space:]]|$)' "$conf"; then
            as_root sed -i -E '/^hosts:/ s/([[:space:]])files([[:space:]]|$)/\1files myhostname\2/' "$conf"
        else
            as_root sed -i -E 's/^hosts:([[:space:]]*)/hosts:\1myhostname /' "$conf"
        fi
    else
        printf 'hosts:          files myhostname dns\n' | as_root tee -a "$conf" >/dev/null
    fi
}

_coffer_flush_nscd() {
    if command -v nscd >/dev/null 2>&1; then as_root nscd -i hosts 2>/dev/null || true; fi
}

# ensure_localhost_resolution [name...]
#   Makes *.localhost resolve to the loopback address. Names default to dev.localhost (plus
#   COFFER_LOCALHOST_NAMES); they matter only for the /etc/hosts fallback.
ensure_localhost_resolution() {
    local names=("$@")
    [[ ${#names[@]} -eq 0 ]] && names=(dev.localhost)
    # shellcheck disable=SC2206  # word splitting wanted
    [[ -n "${COFFER_LOCALHOST_NAMES:-}" ]] && names+=(${COFFER_LOCALHOST_NAMES//,/ })

    # Any *.localhost name resolves (nss-myhostname or similar): nothing to do.
    getent hosts coffer-check.localhost >/dev/null 2>&1 && return 0
    # The wanted names were already added to /etc/hosts earlier: nothing to do.
    _coffer_names_resolve "${names[@]}" && return 0

    if is_interactive; then
        local answer
        read -r -p "Coffer needs *.localhost to resolve to this machine. Install libnss-myhostname (or add /etc/hosts entries)? [Y/n] " answer
        case "${answer:-y}" in
            [Yy]*) ;;
            *) _coffer_manual_instructions "${names[@]}"; return 1 ;;
        esac
    fi
    if ! root_prefix >/dev/null; then
        _coffer_manual_instructions "${names[@]}"
        return 1
    fi

    # Preferred: nss-myhostname resolves every *.localhost name to 127.0.0.1 and ::1.
    if command -v apt-get >/dev/null 2>&1; then
        if ensure_apt_packages libnss-myhostname && _coffer_nsswitch_add_myhostname; then
            _coffer_flush_nscd
            if getent hosts coffer-check.localhost >/dev/null 2>&1; then
                log "*.localhost now resolves (libnss-myhostname)"
                return 0
            fi
        fi
        log "libnss-myhostname did not make *.localhost resolve; falling back to /etc/hosts"
    fi

    # Fallback: one /etc/hosts line per name (IPv4 only).
    local name
    for name in "${names[@]}"; do
        if ! getent hosts "$name" >/dev/null 2>&1; then
            log "adding '127.0.0.1 $name' to /etc/hosts"
            printf '127.0.0.1 %s # added by coffer scripts/ensure-localhost-resolution\n' "$name" \
                | as_root tee -a /etc/hosts >/dev/null || true
        fi
    done
    _coffer_flush_nscd
    if _coffer_names_resolve "${names[@]}"; then
        return 0
    fi
    _coffer_manual_instructions "${names[@]}"
    return 1
}

# ---------------------------------------------------------------------------------------------
# Python venv
# ---------------------------------------------------------------------------------------------

# Prints the path of a Python >= 3.11 (COFFER_PYTHON, else python3.11, python3, python).
find_python() {
    local candidate
    for candidate in ${COFFER_PYTHON:-python3.11 python3 python}; do
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    die "no Python >= 3.11 found (set COFFER_PYTHON=/path/to/python3.11)"
}

# create_venv PYTHON DIR: creates DIR as a venv with pip; on Debian installs pythonX.Y-venv if needed.
create_venv() {
    local py="$1" dir="$2"
    if "$py" -m venv "$dir" >/dev/null 2>&1 && "$dir/bin/python" -m pip --version >/dev/null 2>&1; then
        return 0
    fi
    # Debian's own python3 needs the pythonX.Y-venv package for ensurepip.
    local ver
    ver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    log "'$py -m venv' failed; trying to install python$ver-venv"
    ensure_apt_packages "python$ver-venv" || die "cannot create a venv with $py (install python$ver-venv)"
    "$py" -m venv "$dir" || die "cannot create a venv with $py in $dir"
}

# Drops pip's "Location 'file:///...' is ignored" noise caused by machine-wide extra index dirs.
_coffer_pip_filter() {
    grep -v -E "^WARNING: Location 'file://[^']*' is ignored: it is neither a file nor a directory\.$" >&2 || true
}

# ensure_venv LOCKFILE: creates/reuses $COFFER_VENV, installs LOCKFILE (with hashes) and the coffer
# package (editable). Skips pip entirely when the lock file, pyproject.toml and the interpreter are
# unchanged since the last successful install (stamp file inside the venv).
ensure_venv() {
    local lock="$1"
    [[ -f "$COFFER_ROOT/$lock" ]] || die "$lock not found (run scripts/lock)"

    if [[ ! -x "$COFFER_VENV/bin/python" ]] || ! "$COFFER_VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        local py
        py="$(find_python)"
        log "creating venv $COFFER_VENV with $py ($("$py" --version 2>&1))"
        create_venv "$py" "$COFFER_VENV"
    fi
    "$COFFER_VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$COFFER_VENV has Python < 3.11; remove it (or set COFFER_VENV) and re-run"

    local stamp="$COFFER_VENV/.coffer-install-${lock##*/}"
    local want
    want="$( {
        cat "$COFFER_ROOT/$lock" "$COFFER_ROOT/pyproject.toml"
        "$COFFER_VENV/bin/python" -c 'import sys; print(sys.version, sys.prefix)'
    } | sha256sum | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$COFFER_VENV/bin/coffer" ]]; then
        return 0
    fi

    log "installing $lock into $COFFER_VENV"
    rm -f "$stamp"
    local pip=("$COFFER_VENV/bin/python" -m pip --disable-pip-version-check --no-input)
    "${pip[@]}" install -q --require-hashes -r "$COFFER_ROOT/$lock" 2>&1 | _coffer_pip_filter
    "${pip[@]}" install -q --no-deps --no-build-isolation -e "$COFFER_ROOT" 2>&1 | _coffer_pip_filter
    printf '%s\n' "$want" >"$stamp"
    _coffer_warn_unlocked
}

# Warns about packages in the venv that no lock file pins (CI's fresh venv will not have them).
_coffer_warn_unlocked() {
    local extra
    extra="$("$COFFER_VENV/bin/python" - "$COFFER_ROOT/requirements/lock.txt" \
        "$COFFER_ROOT/requirements/test-lock.txt" <<'PY'
import importlib.metadata as md, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = {"pip", "coffer"}
for path in sys.argv[1:]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    locked |= {norm(m[1]) for m in (re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==", l) for l in lines) if m}
print(" ".join(sorted({norm(d.metadata["Name"]) for d in md.distributions()} - locked)))
PY
)" || return 0
    if [[ -n "$extra" ]]; then
        log "note: $COFFER_VENV has packages that no lock file pins (CI will not have them): $extra"
        log "      remove them, or start clean with: rm -rf $COFFER_VENV"
    fi
}

# Puts the venv first on PATH (tests may spawn `coffer` as a subprocess).
activate_venv() {
    export VIRTUAL_ENV="$COFFER_VENV"
    export PATH="$COFFER_VENV/bin:$PATH"
}
