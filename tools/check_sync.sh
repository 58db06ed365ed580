#!/usr/bin/env bash
# Fails when the committed package is not what the notebooks export, or a notebook is not clean.
# Runs before the tests: each notebook's last cell re-exports, which would hide the drift.
set -euo pipefail
cd "$(dirname "$0")/.."
nbdev-export
if [ -n "$(git status --porcelain -- fasterbn)" ]; then
  echo "package out of sync with notebooks: run nbdev-export and commit fasterbn/:"; git status --porcelain -- fasterbn; exit 1
fi
nbdev-clean
if [ -n "$(git status --porcelain -- nbs)" ]; then
  echo "notebooks not clean: run nbdev-clean and commit nbs/:"; git status --porcelain -- nbs; exit 1
fi
echo "notebooks and package in sync"
