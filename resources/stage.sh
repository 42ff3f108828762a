#!/bin/bash
# usage: stage.sh NAME CMD [ARG...]
# Runs CMD between a start line and an end line that gives its wall time, so
# that a CI log shows where the time went; exits with CMD's status.
name=$1
shift
printf '\n==> %s: %s\n' "$name" "$*"
start=$(date +%s%N)
rc=0
"$@" || rc=$?
ms=$((($(date +%s%N) - start) / 1000000))
t=$(printf '%dm%02d.%ds' $((ms / 60000)) $((ms / 1000 % 60)) $((ms / 100 % 10)))
if [ $rc = 0 ]; then
    printf '<== %s: ok in %s\n' "$name" "$t"
else
    printf '<== %s: FAILED (exit %d) after %s\n' "$name" "$rc" "$t"
fi
exit $rc
