# step NAME BUDGET_S COMMAND...: run COMMAND under min(BUDGET_S, time left before the deadline); record rc, seconds.
# Sourced by gpu_check.sh and gpu_science.sh, which set DEADLINE_S, START, STEPS=() and STEP_TAG (the log prefix).
step() {
  local name=$1 budget=$2; shift 2
  local left=$(( DEADLINE_S - ($(date +%s) - START) ))
  (( budget > left )) && budget=$left
  if (( budget < 5 )); then
    echo "$STEP_TAG: $name skipped, deadline reached" >&2
    STEPS+=("{\"name\": \"$name\", \"rc\": null, \"seconds\": 0, \"timed_out\": false, \"skipped\": true}")
    LAST_RC=skipped
    return 0
  fi
  echo "$STEP_TAG: $name (up to ${budget}s)" >&2
  local t0=$(date +%s)
  timeout --kill-after=10 "$budget" "$@"
  local rc=$?
  local took=$(( $(date +%s) - t0 ))
  local timed=false; { [ $rc = 124 ] || [ $rc = 137 ]; } && timed=true
  STEPS+=("{\"name\": \"$name\", \"rc\": $rc, \"seconds\": $took, \"timed_out\": $timed, \"skipped\": false}")
  LAST_RC=$rc
}
