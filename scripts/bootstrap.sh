#!/usr/bin/env bash
# Creates or refreshes .venv (Python 3.10) from requirements.lock. Idempotent: when the venv
# already matches the lock file, pyproject.toml and this script it returns in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

want="$(cat requirements.lock pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
stamp=.venv/.segpipe-lock-sha256
if [[ -x .venv/bin/python && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

find_python310() {
  local c
  for c in python3.10 "$(command -v pyenv >/dev/null 2>&1 && pyenv prefix 3.10 2>/dev/null)/bin/python3.10" python3; do
    if [[ -n "$c" ]] && command -v "$c" >/dev/null 2>&1 \
       && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  echo "bootstrap: Python 3.10 is required (TFX 1.16 supports 3.9-3.10 only); install it, e.g. 'pyenv install 3.10'" >&2
  return 1
}

py="$(find_python310)"
echo "bootstrap: building .venv with $py from requirements.lock" >&2
if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))'; then
  rm -rf .venv
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "uv==0.13.9"
.venv/bin/uv pip install --python .venv/bin/python -r requirements.lock >&2
.venv/bin/uv pip install --python .venv/bin/python --no-deps --no-build-isolation -e . >&2
# Bytecode now, as pip does at install time and uv does not: where PYTHONDONTWRITEBYTECODE is set (as on
# these machines) nothing caches it later, and every process (each `segpipe` command, Beam worker and
# TFLite conversion) compiled TF/TFX from source again: 25 s to import them instead of 10.
echo "bootstrap: compiling bytecode" >&2
.venv/bin/python -m compileall -q -j 0 "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null \
  || echo "bootstrap: some files did not compile to bytecode (they are compiled when imported)" >&2
echo "$want" > "$stamp"
echo "bootstrap: .venv ready" >&2
