#!/usr/bin/env bash
# The GPU suite's one device command, run from the repository root:
#
#     bash bench/gpu_suite.sh OUT_DIR [--quick] [--deadline SECONDS] [--rehearsal] [--no-estimates]
#
# With the machine's own python3 (PYTHON overrides it): no virtual environment, nothing
# fetched. mirasol is installed with `pip install --no-deps --no-build-isolation --no-index
# -e .`, and the suite runs from this checkout either way (if pip fails: no setuptools, a
# read-only site-packages). Everything lands in OUT_DIR, flat: <card>.md, <card>.json
# (rewritten after every row) and suite.log.
#
# The deadline (default 300 s, --quick 150 s, --rehearsal 60 s) counts from this script's
# start: install, interpreter start-up, parity, compiles, tables. The suite stops itself a
# few seconds before it with the report written; as a backstop, timeout(1) sends SIGTERM
# (the suite writes its partial report) 2 s before it and SIGKILL at it.
# --rehearsal runs the same path on the CPU (tiny shapes, Triton's interpreter), labelled
# as such. SUITE_NO_INSTALL=1 skips pip (the rehearsal test: it must not reinstall the
# environment it runs in); SUITE_DRY_RUN=1 prints the suite's command line and exits.
set -u
started=$(date +%s.%N)
out=${1:?usage: bash bench/gpu_suite.sh OUT_DIR [--quick] [--deadline S] [--rehearsal]}
shift
py=${PYTHON:-python3}
repo=$(pwd)

deadline="" quick=0 rehearsal=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    --deadline) deadline=${args[i + 1]:-} ;;
    --quick) quick=1 ;;
    --rehearsal) rehearsal=1 ;;
  esac
done
# The defaults of mirasol.suite (DEFAULT_DEADLINE_S, QUICK_DEADLINE_S, rehearsal_plan).
if [ -z "$deadline" ]; then
  if [ $rehearsal = 1 ]; then deadline=60; elif [ $quick = 1 ]; then deadline=150
  else deadline=300; fi
  args+=(--deadline "$deadline")
fi

mkdir -p "$out"
log="$out/suite.log"
say() { echo "gpu_suite.sh: $*" | tee -a "$log"; }

if [ "${SUITE_NO_INSTALL:-0}" != 1 ]; then
  say "pip install --no-deps --no-build-isolation --no-index -e ."
  if PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 timeout 60 \
      "$py" -m pip install --quiet --no-deps --no-build-isolation --no-index -e . >>"$log" 2>&1
  then say "installed"
  else say "pip install failed (see above): running from the checkout all the same"
  fi
fi
# Run from the checkout whatever pip did: mirasol first on the path, and kernels/ as
# mirasol.kernels (pyproject's package-dir mapping) by adding the repository root to the
# package's path. An installed copy elsewhere is not what runs.
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" MIRASOL_ROOT="$repo"
run=("$py" -u -c 'import os, sys, mirasol
mirasol.__path__.append(os.environ["MIRASOL_ROOT"])
from mirasol.cli import main
sys.exit(main(sys.argv[1:]))')

suite=(bench --suite gpu --out-dir "$out" --started-at "$started" "${args[@]}")
# The backstop: SIGTERM 2 s before the deadline, SIGKILL at it (mirasol.suite.BACKSTOP_S:
# the suite's own alarm comes earlier).
left=$(awk -v s="$started" -v d="$deadline" -v now="$(date +%s.%N)" \
  'BEGIN { t = s + d - now - 2; printf "%.1f", (t > 1 ? t : 1) }')
if [ "${SUITE_DRY_RUN:-0}" = 1 ]; then
  printf '%q ' timeout --signal=TERM --kill-after=2 "$left" "${run[@]}" "${suite[@]}"
  echo
  exit 0
fi
say "deadline ${deadline} s from the start; ${left} s left for the suite"
export PYTHONUNBUFFERED=1
# timeout(1) runs in a process group of its own: a SIGTERM (or SIGINT) sent to this
# script, or to its group, is passed on, and the suite writes its partial report.
timeout --signal=TERM --kill-after=2 "$left" "${run[@]}" "${suite[@]}" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT HUP
wait "$child"
status=$?
while kill -0 "$child" 2>/dev/null; do
  wait "$child"
  status=$?
done
say "suite exited with status $status after $(awk -v s="$started" -v now="$(date +%s.%N)" \
  'BEGIN { printf "%.1f", now - s }') s"
exit $status
