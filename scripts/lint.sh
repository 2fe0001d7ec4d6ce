#!/usr/bin/env bash
# Fails when a tracked C++ file is not formatted as .clang-format says.
# Fix with: git ls-files '*.cc' '*.h' | xargs clang-format -i
set -euo pipefail
cd "$(dirname "$0")/.."
format=$(command -v clang-format-14 || command -v clang-format)
git ls-files '*.cc' '*.h' | xargs "$format" --dry-run --Werror
echo "lint: $(git ls-files '*.cc' '*.h' | wc -l) C++ files formatted as .clang-format says"
