#!/usr/bin/env bash
# A small build, run by `scripts/demo` inside a fresh checkout of this repository.
set -e
echo "Building $(basename "$PWD") at $(git rev-parse --short HEAD) on $(uname -sm)"
echo "Sources: $(find Sources -name '*.swift' | wc -l) Swift files, $(cat $(find Sources -name '*.swift') | wc -l) lines"
echo "Checking that every Swift file ends with a newline..."
for file in $(find Sources Tests -name '*.swift'); do
    [ -z "$(tail -c 1 "$file")" ] || { echo "missing newline: $file"; exit 1; }
done
echo "All good."
