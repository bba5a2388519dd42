# shellcheck shell=bash
# meshnet paths for ../shared/peerbench (its EXTRA hook): sleeve plain and sleeve encrypted,
# measured in the same run and round-robin with tinc, nebula, fastd, wireguard-go, VXLAN, raw.
#
#   cd /work/shared/peerbench && sudo EXTRA=/work/main/bench/peerbench_meshnet.sh \
#       EXTRA_PATHS="meshnet-plain meshnet-aes" ./run.sh
#   (or bench/run_peerbench.sh, which does that and then renders docs/benchmarks.md + chart)
#
# Each path runs one meshnet router in $NS_A and one in $NS_B (each with its own ports,
# bridge, TAP, state and run dirs under $WORK, kernel VXLAN off so everything rides the
# sleeve, Docker off, metrics off). iperf3/ping run in $NS_A/$NS_B, so each host reaches
# the overlay through an address on its meshnet bridge (like Weave's `expose`): the same
# bridge -> TAP -> pump -> UDP path a container's traffic takes, without the container's
# veth hop. bench/sleeve_lab.py measures container to container in a `meshnet lab`.
MESHNET_ROOT=${MESHNET_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
MESHNET_PY=${MESHNET_PY:-$MESHNET_ROOT/.venv/bin/python}

# $1 path name, $2 port (TCP control = UDP sleeve), $3 bridge, $4 tap, $5 subnet prefix, $6 password or "",
# $7 "fastdp" to let the routers use kernel VXLAN (the default keeps everything on the sleeve)
_meshnet_path() {
  local name=$1 port=$2 br=$3 tap=$4 pfx=$5 pw=$6 dp=${7:-sleeve} d=$WORK/$1 n ns ip peers i
  local mode_flag="--no-fastdp"
  [ "$dp" = fastdp ] && mode_flag=""
  if [ "${MESHNET_BENCH_BRNF:-}" = 0 ]; then  # opt-in experiment: bridged frames skip iptables
    for ns in "$NS_A" "$NS_B"; do
      ip netns exec "$ns" sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0
    done
  fi
  for n in a b; do
    mkdir -p "$d/$n/state" "$d/$n/run"
    if [ $n = a ]; then ns=$NS_A peers=""; else ns=$NS_B peers="$UL_A:$port"; fi
    # ip netns exec execs the router: $! is its PID
    env PYTHONPATH="$MESHNET_ROOT" MESHNET_PASSWORD="$pw" MESHNET_PUMP_SPIN_US="${MESHNET_PUMP_SPIN_US:-0}" MESHNET_PUMP_OFFLOAD="${MESHNET_PUMP_OFFLOAD:-1}" MESHNET_PUMP_BATCH="${MESHNET_PUMP_BATCH:-64}" ip netns exec "$ns" "$MESHNET_PY" -m meshnet launch --foreground \
      --run-dir "$d/$n/run" --state-dir "$d/$n/state" --port "$port" --udp-port "$port" \
      --bridge "$br" --tap "$tap" --nickname "$name-$n" $mode_flag --metrics-addr "" \
      --docker-socket none --docker-network "" --ipalloc-range 10.64.0.0/16 $peers \
      </dev/null >"$d/$n/router.log" 2>&1 &
    track "$name" "$n" $!
  done
  for n in a b; do
    if [ $n = a ]; then ns=$NS_A ip=$pfx.1; else ns=$NS_B ip=$pfx.2; fi
    for ((i = 0; i < 100; i++)); do ip -n "$ns" link show "$br" >/dev/null 2>&1 && break; sleep 0.1; done
    ip -n "$ns" addr add "$ip/24" dev "$br" || { fail_path "$name" "no bridge $br in $ns ($(tail -2 "$d/$n/router.log" | tr '\n' ' '))"; return 1; }
    ip -n "$ns" link set "$br" up
  done
  if ! wait_ping "$NS_A" "$pfx.2" 20; then fail_path "$name" "no ping over $br ($(tail -2 "$d/a/router.log" | tr '\n' ' '))"; return 1; fi
  if [ "$dp" = fastdp ]; then  # the VXLAN path is used once its probes are answered
    for ((i = 0; i < 60; i++)); do
      PYTHONPATH="$MESHNET_ROOT" "$MESHNET_PY" -m meshnet status --run-dir "$d/a/run" --json 2>/dev/null | grep -q '"mode": "fastdp"' && break
      sleep 0.25
    done
  fi
  local pump
  pump=$(PYTHONPATH="$MESHNET_ROOT" "$MESHNET_PY" -m meshnet status --run-dir "$d/a/run" --json 2>/dev/null |
    "$MESHNET_PY" -c 'import json,sys; print(json.load(sys.stdin)["dataplane"]["pump_offloads"])' 2>/dev/null)
  add_path "$name" "$pfx.2" "$(ip -n "$NS_A" link show "$br" | awk '/mtu/ {for (i = 1; i < NF; i++) if ($i == "mtu") print $(i + 1)}')" \
    "$(pids_of "$name")" "meshnet sleeve (bridge address, kernel VXLAN off): ${pump:-status unavailable}"
}

setup_meshnet_plain() { _meshnet_path meshnet-plain 6790 mnbrP mntapP 10.99.20 ""; }
setup_meshnet_aes() { _meshnet_path meshnet-aes 6791 mnbrE mntapE 10.99.21 "peerbench-not-secret"; }
setup_meshnet_fastdp() { _meshnet_path meshnet-fastdp 6792 mnbrF mntapF 10.99.22 "" fastdp; }
