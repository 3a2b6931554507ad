#!/usr/bin/env bash
# The slippery-Ant experiment across sessions, from the repository root of any clone:
#   bash experiments/slippery_ant/session.sh start    # resume the sweep in the background (2 runs at a time)
#   bash experiments/slippery_ant/session.sh stop     # SIGINT: every run saves a checkpoint and exits
#   bash experiments/slippery_ant/session.sh refresh  # keep each run's newest checkpoint, redraw figure + status
# Then commit experiments/slippery_ant and docs/slippery_ant.
set -euo pipefail
cd "$(dirname "$0")/../.."
SWEEP=experiments/slippery_ant
LOG=${SLIPPERY_ANT_LOG:-/tmp/slippery_ant.log}  # outside the repository
export MUJOCO_GL=${MUJOCO_GL:-egl}

sweep_pid() { pgrep -f "rl-plasticity sweep .*$SWEEP" | head -n 1 || true; }

case "${1:-}" in
  start)
    [ -z "$(sweep_pid)" ] || { echo "the sweep is already running (pid $(sweep_pid))"; exit 0; }
    nohup rl-plasticity sweep --resume "$SWEEP" --workers 2 >>"$LOG" 2>&1 &
    echo "resumed $SWEEP in the background (pid $!), log $LOG" ;;
  stop)
    pid=$(sweep_pid)
    [ -n "$pid" ] || { echo "the sweep is not running"; exit 0; }
    kill -INT "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 2; done
    echo "stopped; every run saved a checkpoint (log $LOG)" ;;
  refresh)
    [ -z "$(sweep_pid)" ] || { echo "stop the sweep first (it writes checkpoints)"; exit 2; }
    for ckpts in "$SWEEP"/*/seed_*/checkpoints; do  # only the newest checkpoint is committed
      ls "$ckpts"/ckpt-*.pt | sort -t- -k2 -n | head -n -1 | xargs -r rm --
    done
    rl-plasticity compare "$SWEEP" --bin 100000 --metric charts/episodic_return \
      'plasticity/actor/*/dormant_fraction' 'plasticity/critic/*/dormant_fraction' \
      'plasticity/actor/*/stable_rank' 'plasticity/critic/*/stable_rank' \
      'plasticity/actor/*/mean_abs_weight' 'plasticity/critic/*/mean_abs_weight' \
      --out docs/slippery_ant/slippery_ant.png
    python "$SWEEP/status.py" ;;
  *) echo "usage: bash $SWEEP/session.sh start|stop|refresh" >&2; exit 2 ;;
esac
