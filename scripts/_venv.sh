# Sourced by scripts/keybrake and scripts/test: finds Python 3.12+ and prepares .venv.
# mitmproxy 12 needs Python >= 3.12; many machines' default python3 is older, so look explicitly.

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${KEYBRAKE_VENV:-$repo_root/.venv}"

find_python() {
  local candidate
  for candidate in "${KEYBRAKE_PYTHON:-}" python3.13 python3.12 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  # pyenv keeps versions it does not put on PATH.
  local root="${PYENV_ROOT:-$HOME/.pyenv}"
  for candidate in "$root"/versions/3.13*/bin/python3 "$root"/versions/3.12*/bin/python3; do
    if [ -x "$candidate" ] && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

ensure_venv() {  # $1: the pip extra spec, e.g. "." or ".[test]"
  local spec="$1" python
  if [ ! -x "$venv/bin/python" ]; then
    if ! python="$(find_python)"; then
      echo "keybrake: needs Python 3.12 or newer (mitmproxy 12 does), and found none on PATH or in pyenv." >&2
      echo "keybrake: install one, or point KEYBRAKE_PYTHON at it." >&2
      exit 1
    fi
    echo "keybrake: creating $venv with $python ($("$python" --version))" >&2
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
  fi
  # The install is editable, so code changes need no reinstall; only new dependencies or a new
  # extra do. Skipping pip when pyproject.toml and the extra are unchanged saves seconds per call.
  local stamp="$venv/.keybrake-installed" wanted
  wanted="$spec $(cksum < "$repo_root/pyproject.toml")"
  if [ -f "$stamp" ] && grep -qxF -- "$wanted" "$stamp"; then
    return 0
  fi
  local log="$venv/pip-install.log"
  # Quiet on success (setuptools' build warnings are noise here); the whole log on failure.
  if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$repo_root$spec" >"$log" 2>&1; then
    cat "$log" >&2
    echo "keybrake: installing into $venv failed (log above, also in $log)" >&2
    exit 1
  fi
  # One line per extra and pyproject.toml version installed.
  echo "$wanted" >> "$stamp"
}
