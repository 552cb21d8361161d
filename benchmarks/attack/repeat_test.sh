#!/bin/sh
# Run one pytest node N times; print passes/N as JSON.  Usage: repeat_test.sh N NODE
n=$1; node=$2; pass=0; i=0
while [ "$i" -lt "$n" ]; do
  i=$((i + 1))
  python -m pytest -q -p no:cacheprovider "$node" >/dev/null 2>&1 && pass=$((pass + 1))
done
printf '{"test": "%s", "passes": %d, "runs": %d, "commit": "%s"}\n' "$node" "$pass" "$n" \
  "$(git rev-parse --short HEAD)"
