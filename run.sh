#!/usr/bin/env bash
# ltray quick start: creates .venv on first use, then runs the main job or the tests.
#   bash run.sh sweep [ARGS...]   the main job: the COLT sweep on the embedded data (experiments/sweep_colt.py)
#   bash run.sh test  [ARGS...]   ruff and mypy on ltray/, then the test suite (pytest ARGS)
#   bash run.sh setup             only create or refresh the virtual environment
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
VENV="${LTRAY_VENV:-.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.ltray-installed"

setup() {
    local want
    want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
    if [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
        return 0
    fi
    echo "[run.sh] setting up $VENV (first run takes a few minutes)" >&2
    [ -x "$PY" ] || python3 -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
    # torch and torchvision first, pinned, so pip takes the local wheels where they exist.
    "$PY" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
    "$PY" -m pip install --quiet -e ".[dev]"
    echo "$want" > "$STAMP"
}

cmd="${1:-help}"
[ $# -gt 0 ] && shift
case "$cmd" in
    setup) setup ;;
    sweep) setup; exec "$PY" experiments/sweep_colt.py "$@" ;;
    test)  setup; "$PY" -m ruff check --quiet ltray/; "$PY" -m mypy ltray/
           exec "$PY" -m pytest -q --durations=25 "$@" ;;
    *) sed -n '2,5p' "$0" | sed 's/^# //'; exit 2 ;;
esac
