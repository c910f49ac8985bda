#!/usr/bin/env bash
# The kill -9 crash harness, for longer runs than CI's ten cycles.
#
#   scripts/crash.sh [CYCLES]            # this build: must pass (exit 0)
#   scripts/crash.sh [CYCLES] --broken   # a build that answers before committing: the
#                                        # harness must catch it (exit 0 when it does)
#
# The harness itself is the test `crash::kill_9_under_load_loses_no_acknowledged_event`
# (crates/trackd-server/tests/api/crash.rs); this script sets its cycle count and, with
# --broken, builds trackd with scripts/broken-ack-before-commit.patch in a throwaway
# worktree and points the harness at that binary.
set -euo pipefail
cd "$(dirname "$0")/.."
cycles="${1:-10}"
broken="${2:-}"

run_harness() {
  TRACKD_CRASH_CYCLES="$cycles" cargo test -p trackd-server --test api \
    crash::kill_9_under_load_loses_no_acknowledged_event -- --nocapture --exact
}

if [[ "$broken" != "--broken" ]]; then
  run_harness
  exit 0
fi

worktree="$(mktemp -d)/trackd-broken"
trap 'git worktree remove --force "$worktree" >/dev/null 2>&1 || true' EXIT
git worktree add --detach "$worktree" HEAD >/dev/null
git -C "$worktree" apply "$PWD/scripts/broken-ack-before-commit.patch"
echo "building the broken trackd (answers before committing) in $worktree" >&2
CARGO_TARGET_DIR="$PWD/target/broken" cargo build --manifest-path "$worktree/Cargo.toml" \
  -p trackd-server --bin trackd
export TRACKD_CRASH_BIN="$PWD/target/broken/debug/trackd"
if run_harness; then
  echo "FAIL: the harness passed a build that answers before committing" >&2
  exit 1
fi
echo "OK: the harness caught the build that answers before committing" >&2
