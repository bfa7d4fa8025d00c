#!/usr/bin/env bash
# bench/replicas.sh: 1 replica vs 3 replicas of the bundled server on one PostgreSQL
# database (inbox mode), same load, in one bounded run (about 1½ minutes after the build).
#
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/test bench/replicas.sh
#
# What it does:
#   1. checks its tools: wrk (as root and missing: `apt-get install -y wrk`, announced),
#      psql, curl, cargo; builds the release binary (CARGO_TARGET_DIR, default target/bench);
#   2. pre-signs TOKENS_N distinct user.created events with a dev key in a temp dir
#      (`kinde-webhooks send --print --repeat`, one process per core) and deals them into
#      three files, one per wrk process;
#   3. for each replica count (REPLICAS, default "1 3"): a fresh schema kw_bench_<pid>_<n>,
#      n replicas of `kinde-webhooks --config CFG dev --no-demo` on free loopback ports
#      (same dev key, so every replica verifies every token; [log] level = "warn"; the
#      project's defaults otherwise: 8 workers, a pool of 8), each warmed up with one event;
#      then THREE `wrk -t1 -c CONNS --latency` processes for DURATION seconds, wrk k against
#      replica k mod n with token file k (bench/tokens.lua, each token sent once). So both
#      runs see the same client: 3 × CONNS connections, 3 wrk threads. Replicas stopped with
#      SIGTERM; the schema counted (events stored, jobs done) with psql, then dropped;
#   4. prints a markdown table (events/s summed over the wrk processes; p50/p99 merged from
#      each wrk's latency curve in 0.1 % steps, weighted by its request count; CPU of the
#      replicas, of PostgreSQL's backends for the schema's application_name, and of the
#      whole machine) and the 3 ÷ 1 ratios, and writes it to OUT.
#
# Knobs: DURATION=10, CONNS=16 (per wrk process), TOKENS_N=60000 (shared by the runs: each
# run has its own schema, so no run sees another's events as duplicates), REPLICAS="1 3",
# OUT=bench/results-replicas.md, KEEP=1 (keep the temp dir), DATABASE_URL.
# Loopback only. Every wait is bounded; schemas are dropped on exit, also on failure.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-10}
CONNS=${CONNS:-16}
TOKENS_N=${TOKENS_N:-60000}
REPLICAS=${REPLICAS:-"1 3"}
KEEP=${KEEP:-0}
OUT=${OUT:-$ROOT/bench/results-replicas.md}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/bench}
BIN=$CARGO_TARGET_DIR/release/kinde-webhooks
LUA=$ROOT/bench/tokens.lua
ROUTE=/api/kinde-webhook
WRKS=3

log() { printf '[replicas %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- 1. tools, build
if ! command -v wrk >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        log "wrk is missing: installing the Debian package with 'apt-get install -y wrk'"
        timeout 300 apt-get install -y wrk >&2 || {
            timeout 120 apt-get update >&2 && timeout 300 apt-get install -y wrk >&2
        } || die "could not install wrk"
    else
        die "wrk is missing: install it (Debian/Ubuntu: apt-get install wrk) and run again"
    fi
fi
for tool in psql curl cargo timeout awk; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done
timeout 10 psql "$DATABASE_URL" -Atqc 'SELECT 1' >/dev/null || die "cannot reach DATABASE_URL=$DATABASE_URL"
log "building the release binary (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
(cd "$ROOT" && timeout 1800 cargo build --release --quiet --bin kinde-webhooks) || die "cargo build --release failed"
[[ -x $BIN ]] || die "no binary at $BIN"

# ---------------------------------------------------------------- work dir, cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kinde-replicas.XXXXXX")
PIDS=()
SCHEMAS=()
cleanup() {
    local p s
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for s in "${SCHEMAS[@]}"; do
        PGOPTIONS='-c client_min_messages=warning' timeout 30 psql "$DATABASE_URL" -qc "DROP SCHEMA IF EXISTS \"$s\" CASCADE" >/dev/null 2>&1 ||
            log "could not drop schema $s"
    done
    if [[ $KEEP == 1 ]]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export KINDE_WEBHOOKS_DEV_DIR=$WORK/dev
NPROC=$(nproc)
CLK_TCK=$(getconf CLK_TCK)

free_port() {
    local port
    for _ in $(seq 50); do
        port=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    die "no free port found"
}
cpu_ticks() { # utime + stime of processes, in ticks
    local p sum=0 t
    for p in "$@"; do
        t=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null || echo 0)
        sum=$((sum + t))
    done
    echo "$sum"
}
pg_backends() { # pids of PostgreSQL backends serving the replicas (application_name kinde-webhooks)
    psql "$DATABASE_URL" -Atqc "SELECT pid FROM pg_stat_activity WHERE application_name = 'kinde-webhooks'" 2>/dev/null || true
}
machine_jiffies() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat; }
field() { tr ' ' '\n' <<<"$2" | awk -F= -v k="$1" '$1 == k {print $2}'; }

# ---------------------------------------------------------------- 2. tokens
log "signing $TOKENS_N distinct user.created events ($NPROC processes)"
"$BIN" send user.created --print --repeat 8 >"$WORK/warm.txt"
per=$(((TOKENS_N + NPROC - 1) / NPROC))
pids=()
for ((k = 0; k < NPROC; k++)); do
    timeout 600 "$BIN" send user.created --print --repeat "$per" >"$WORK/signed.$k" &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || die "token signing failed"; done
cat "$WORK"/signed.* | head -n "$TOKENS_N" |
    awk -v dir="$WORK" -v n="$WRKS" '{print > (dir "/tokens." (NR % n))}'
rm -f "$WORK"/signed.*
log "$(cat "$WORK"/tokens.* | wc -l) tokens in $WRKS files"

# ---------------------------------------------------------------- 3. runs
declare -A R
warm=0
for n in $REPLICAS; do
    schema=kw_bench_$$_$n
    SCHEMAS+=("$schema")
    RUN=$WORK/r$n
    mkdir -p "$RUN"
    cat >"$RUN/config.toml" <<EOF
# Written by bench/replicas.sh.
[delivery]
mode = "inbox"

[store]
backend = "postgres"
schema = "$schema"

[log]
level = "warn"
EOF
    ports=()
    rpids=()
    for ((i = 0; i < n; i++)); do
        port=$(free_port)
        DATABASE_URL=$DATABASE_URL KINDE_WEBHOOKS_BIND=127.0.0.1:$port \
            "$BIN" --config "$RUN/config.toml" dev --no-demo >"$RUN/server.$i.log" 2>&1 &
        rpids+=($!)
        PIDS+=($!)
        ports+=("$port")
    done
    for ((i = 0; i < n; i++)); do
        for try in $(seq 150); do
            curl -fsS -m 1 "http://127.0.0.1:${ports[i]}/readyz" >/dev/null 2>&1 && break
            kill -0 "${rpids[i]}" 2>/dev/null || die "replica $i exited: $(tail -n 5 "$RUN/server.$i.log")"
            ((try < 150)) || die "replica $i not ready in 15 s: $(tail -n 5 "$RUN/server.$i.log")"
            sleep 0.1
        done
        warm=$((warm + 1))
        status=$(curl -sS -m 10 -o /dev/null -w '%{http_code}' -H 'Content-Type: application/jwt' \
            --data-binary "$(sed -n "${warm}p" "$WORK/warm.txt")" "http://127.0.0.1:${ports[i]}$ROUTE") || true
        [[ $status == 200 ]] || die "warm-up of replica $i answered $status"
    done
    log "$n replica(s) on ports ${ports[*]}; $WRKS wrk processes × $CONNS connections, ${DURATION}s"
    mapfile -t backends < <(pg_backends)
    cpu0=$(cpu_ticks "${rpids[@]}")
    pg0=$(cpu_ticks "${backends[@]}")
    read -r busy0 total0 < <(machine_jiffies)
    wpids=()
    for ((k = 0; k < WRKS; k++)); do
        port=${ports[k % n]}
        WRK_PCTL=1 TOKENS=$WORK/tokens.$k WRK_THREADS=1 timeout $((DURATION + 60)) \
            wrk -t 1 -c "$CONNS" -d "${DURATION}s" --timeout 5s --latency -s "$LUA" \
            "http://127.0.0.1:$port$ROUTE" >"$RUN/wrk.$k.txt" 2>&1 &
        wpids+=($!)
    done
    for p in "${wpids[@]}"; do wait "$p" || die "wrk failed: $(tail -n 5 "$RUN"/wrk.*.txt)"; done
    read -r busy1 total1 < <(machine_jiffies)
    cpu1=$(cpu_ticks "${rpids[@]}")
    # Backends that came and went during the run are missed: a lower bound.
    pg1=$(cpu_ticks "${backends[@]}")

    ok=0 non200=0 wrapped=0 rps=0 dur_sum=0
    : >"$RUN/pctl.txt"
    for ((k = 0; k < WRKS; k++)); do
        line=$(grep '^BENCH ' "$RUN/wrk.$k.txt") || die "no BENCH line: $(tail -n 5 "$RUN/wrk.$k.txt")"
        o=$(field ok "$line")
        d=$(field duration_us "$line")
        req=$(field requests "$line")
        ok=$((ok + o))
        non200=$((non200 + $(field non200 "$line")))
        wrapped=$((wrapped + $(field wrapped "$line")))
        dur_sum=$((dur_sum + d))
        rps=$(awk -v r="$rps" -v o="$o" -v d="$d" 'BEGIN {printf "%.1f", r + o / (d / 1e6)}')
        awk -v w="$req" '$1 == "PCTL" {print w / 999, $3}' "$RUN/wrk.$k.txt" >>"$RUN/pctl.txt"
    done
    dur_s=$(awk -v d="$dur_sum" -v n="$WRKS" 'BEGIN {printf "%.3f", d / n / 1e6}')
    pct() { sort -k2,2n "$RUN/pctl.txt" | awk -v q="$1" '{w[NR] = $1; v[NR] = $2; t += $1}
        END {c = 0; for (i = 1; i <= NR; i++) {c += w[i]; if (c >= q * t) {printf "%.2f", v[i] / 1000; exit}}}'; }
    R[$n,rps]=$(printf '%.0f' "$rps")
    R[$n,p50]=$(pct 0.50)
    R[$n,p99]=$(pct 0.99)
    R[$n,non200]=$non200
    R[$n,wrapped]=$wrapped
    R[$n,cpu]=$(awk -v a="$cpu0" -v b="$cpu1" -v hz="$CLK_TCK" -v d="$dur_s" 'BEGIN {printf "%.2f", (b - a) / hz / d}')
    R[$n,pg]=$(awk -v a="$pg0" -v b="$pg1" -v hz="$CLK_TCK" -v d="$dur_s" 'BEGIN {printf "%.2f", (b - a) / hz / d}')
    R[$n,busy]=$(awk -v a="$busy0" -v b="$busy1" -v s="$total0" -v t="$total1" -v c="$NPROC" 'BEGIN {printf "%.2f", c * (b - a) / (t - s)}')
    log "  -> ${R[$n,rps]} events/s, p50 ${R[$n,p50]} ms, p99 ${R[$n,p99]} ms, non-200 $non200"

    for p in "${rpids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${rpids[@]}"; do
        timeout 30 tail --pid="$p" -f /dev/null || { log "replica $p did not stop in 30 s; killing it"; kill -9 "$p" 2>/dev/null || true; }
        wait "$p" 2>/dev/null || true
    done
    PIDS=()
    q() { timeout 30 psql "$DATABASE_URL" -Atqc "SET search_path TO \"$schema\"; $1" | tail -n 1; }
    R[$n,acked]=$((ok + n))
    R[$n,stored]=$(q "SELECT COUNT(*) FROM events")
    R[$n,done]=$(q "SELECT COUNT(*) FROM jobs WHERE status = 'done'")
    R[$n,done_rate]=$(awk -v n="${R[$n,done]}" -v d="$dur_s" 'BEGIN {printf "%.0f", n / d}')
    R[$n,check]=ok
    ((R[$n,stored] >= R[$n,acked])) || R[$n,check]="MISSING $((R[$n,acked] - R[$n,stored]))"
    PGOPTIONS='-c client_min_messages=warning' timeout 30 psql "$DATABASE_URL" -qc "DROP SCHEMA IF EXISTS \"$schema\" CASCADE" >/dev/null
done

# ---------------------------------------------------------------- 4. summary
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}'; }
{
    echo "# 1 vs 3 replicas on PostgreSQL ($(date -u '+%Y-%m-%d %H:%M UTC'), commit $(cd "$ROOT" && git rev-parse --short HEAD))"
    echo
    echo "$NPROC cores ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)); PostgreSQL $(psql "$DATABASE_URL" -Atqc 'SHOW server_version') on the same machine; $WRKS wrk processes × $CONNS connections, ${DURATION}s per run; inbox mode, user.created (one handler job per event)."
    echo
    echo "| replicas | events/s (200s) | non-200 | p50 ms | p99 ms | replicas' CPU (cores) | PostgreSQL backends' CPU (cores) | machine busy (cores) | acknowledged | stored | jobs done at stop | handler jobs done/s | check |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    for n in $REPLICAS; do
        echo "| $n | ${R[$n,rps]} | ${R[$n,non200]} | ${R[$n,p50]} | ${R[$n,p99]} | ${R[$n,cpu]} | ${R[$n,pg]} | ${R[$n,busy]} | ${R[$n,acked]} | ${R[$n,stored]} | ${R[$n,done]} | ${R[$n,done_rate]} | ${R[$n,check]} |"
    done
    echo
    if [[ " $REPLICAS " == *" 1 "* && " $REPLICAS " == *" 3 "* ]]; then
        echo "3 ÷ 1: events/s **$(ratio "${R[3,rps]}" "${R[1,rps]}")**, p50 $(ratio "${R[3,p50]}" "${R[1,p50]}"), p99 $(ratio "${R[3,p99]}" "${R[1,p99]}"), handler jobs done/s $(ratio "${R[3,done_rate]}" "${R[1,done_rate]}")."
        echo
    fi
    for n in $REPLICAS; do
        ((${R[$n,wrapped]} == 0)) || echo "- **WRAPPED**: the $n-replica run sent ${R[$n,wrapped]} requests past its tokens (duplicates; raise TOKENS_N)."
    done
    echo "- acknowledged = wrk's 200s plus one warm-up per replica; stored ≥ acknowledged is the check (stored may exceed it by requests in flight when wrk stopped)."
    echo "- handler jobs done/s: jobs done when the replicas stopped ÷ run seconds: the workers' pace. Below events/s, a backlog was left (the workers fell behind the receivers and drain it later)."
    echo "- machine busy: all CPU in use on the machine during the run (/proc/stat), including wrk, PostgreSQL and anyone else's work; $NPROC is saturated."
    echo "- PostgreSQL backends' CPU: the backends with application_name kinde-webhooks alive at the start of the run (a lower bound)."
} >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
cat "$OUT"
log "written to $OUT"
