#!/usr/bin/env bash
# Install everything meshnet needs on Debian 12, as root, into ./.venv:
# system packages (apt-get), a virtualenv with meshnet, its test tools and the benchmark
# suite's chart library (pip),
# and the compiled sleeve pump (Cython extension, built in place).
set -euo pipefail
cd "$(dirname "$0")"

export DEBIAN_FRONTEND=noninteractive
packages=(
  python3 python3-venv python3-dev gcc libssl-dev      # build: Python headers, libcrypto for the pump
  iproute2 iputils-ping iperf3 nftables iptables procps  # runtime, lab and tests
  docker.io containerd runc podman containernetworking-plugins busybox-static curl jq  # Docker and CNI integration tests
  mmdebstrap                                           # image/build.sh: the container image from Debian packages
)
missing=()
for p in "${packages[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if ((${#missing[@]})); then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# bench: matplotlib, for the charts the README's `python -m bench` writes (and its smoke test checks)
.venv/bin/pip install -q -e '.[test,kubernetes,bench]'   # also compiles meshnet/_fastpath.pyx in place
.venv/bin/python -c "import meshnet._fastpath" || { echo "the compiled pump did not build" >&2; exit 1; }
echo "meshnet installed: .venv/bin/meshnet"
