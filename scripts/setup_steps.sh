# Sourced by the setup scripts: one line per step with its duration, the step's own
# output (pip, apt, dpkg) in $SETUP_LOG, and on failure the log's tail and its path.
# Needs SETUP_LOG set; each step runs with the repository root as its directory.

# step "WHAT" CMD...: runs CMD; prints "[setup] WHAT ... done in N s" or stops the setup.
step() {
  local what=$1 start=$SECONDS rc=0 logged
  shift
  printf '[setup] %s ... ' "$what"
  printf '\n### %s\n$ %s\n' "$what" "$*" >>"$SETUP_LOG"
  logged=$(wc -l <"$SETUP_LOG")
  "$@" >>"$SETUP_LOG" 2>&1 || rc=$?
  if [ "$rc" = 0 ]; then
    echo "done in $((SECONDS - start)) s"
    return 0
  fi
  echo "FAILED after $((SECONDS - start)) s"
  echo "[setup] its last lines of output:"
  tail -n +$((logged + 1)) "$SETUP_LOG" | tail -n 25 | sed 's/^/    /'
  echo "[setup] stopped; the full log is $SETUP_LOG"
  exit "$rc"
}

# optional_step "WHAT" "WHAT IT MEANS IF IT FAILS" CMD...: like step, but a failure only
# prints its consequence and the setup goes on.
optional_step() {
  local what=$1 otherwise=$2 start=$SECONDS rc=0
  shift 2
  printf '[setup] %s ... ' "$what"
  printf '\n### %s\n$ %s\n' "$what" "$*" >>"$SETUP_LOG"
  "$@" >>"$SETUP_LOG" 2>&1 || rc=$?
  if [ "$rc" = 0 ]; then
    echo "done in $((SECONDS - start)) s"
  else
    echo "not possible here ($((SECONDS - start)) s): $otherwise (details: $SETUP_LOG)"
  fi
}

# apt_install PACKAGE...: as root or through sudo, without recommended extras.
apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq &&
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# human_duration SECONDS: "3 min 12 s" or "41 s".
human_duration() {
  if [ "$1" -ge 60 ]; then echo "$(($1 / 60)) min $(($1 % 60)) s"; else echo "$1 s"; fi
}
