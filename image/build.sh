#!/usr/bin/env bash
# Build meshnet's container image from Debian packages and this checkout; no registry pull.
#
#   image/build.sh [--tag TAG] [--load docker|containerd] [--docker-host URL]
#                  [--containerd-address SOCK] [--namespace NS] [--cache DIR]
#                  [--python PY] [--quiet] [--help]
#
# What goes in (two layers):
#   base  Debian 12 (bookworm) made with mmdebstrap, variant essential (coreutils, dash,
#         util-linux with nsenter, ...), plus the packages in image/packages.txt: python3,
#         iproute2, nftables, iptables and the containernetworking-plugins portmap,
#         loopback, bandwidth and host-local (the other plugins are left out).
#   app   meshnet built from this checkout as a wheel with its compiled pump, and its Python
#         dependencies at the versions the builder's Python has (pip, from PyPI), under
#         /usr/local/lib/python3.11/dist-packages; /usr/local/bin/meshnet and meshnet-cni;
#         /opt/meshnet/cni/{install.sh,10-meshnet.conflist} for the DaemonSet's init container.
#
# Both layers are cached in --cache (default /var/cache/meshnet-image), keyed by a hash of
# what makes them: the base by this script and image/packages.txt, the app by every file
# of the checkout that goes into the wheel plus the dependency versions. A first build
# takes a few minutes (downloading about 40 MB of .debs, compiling the pump); an unchanged
# checkout rebuilds nothing and prints the same archive path in about a second.
#
# The result is one image archive in `docker save` format, which both `docker load` and
# `ctr images import` read:  CACHE/meshnet-image-<key>.tar  (its path is printed last).
#   --load docker       docker load it (DOCKER_HOST or --docker-host; any dockerd >= 20.10)
#   --load containerd   ctr -n NS images import it (NS default k8s.io, where the kubelet's
#                       CRI looks; --containerd-address default /run/containerd/containerd.sock)
# --load may be given twice. The image is TAG (default meshnet/meshnet:<version>, the tag
# cni/kubernetes/meshnet.yaml names), ENTRYPOINT unset, CMD `meshnet launch --foreground`.
#
# Needs: root, mmdebstrap (apt-get install mmdebstrap), a Debian 12 builder whose Python is
# 3.11 (the image's; the compiled pump must match it), and network access to Debian's
# mirror and PyPI for the first build.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cache=${MESHNET_IMAGE_CACHE:-/var/cache/meshnet-image}
tag=
loads=()
docker_host=${DOCKER_HOST:-}
ctr_address=/run/containerd/containerd.sock
namespace=k8s.io
python=
quiet=0
suite=bookworm

usage() { sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "image/build.sh: $*" >&2; exit "${2:-1}"; }
say() { [ "$quiet" = 1 ] || echo "image/build.sh: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --load) case "${2:-}" in docker|containerd) loads+=("$2") ;; *) die "--load takes docker or containerd, not '${2:-}'" 2 ;; esac; shift 2 ;;
    --docker-host) docker_host=${2:?--docker-host needs a value}; shift 2 ;;
    --containerd-address) ctr_address=${2:?--containerd-address needs a value}; shift 2 ;;
    --namespace) namespace=${2:?--namespace needs a value}; shift 2 ;;
    --cache) cache=${2:?--cache needs a value}; shift 2 ;;
    --python) python=${2:?--python needs a value}; shift 2 ;;
    --quiet) quiet=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" 2 ;;
  esac
done

if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python=$root/.venv/bin/python; else python=python3; fi
fi
command -v "$python" >/dev/null || die "no Python at $python (--python)"
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$pyver" = 3.11 ] || die "the builder's Python is $pyver; the image's is 3.11 and the compiled pump must match it (--python)"
command -v mmdebstrap >/dev/null || die "needs mmdebstrap (apt-get install mmdebstrap)"
[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap makes device nodes and root-owned files)"
version=$(cd "$root" && "$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
tag=${tag:-meshnet/meshnet:$version}
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9  # one build at a time per cache

hash_of() { sha256sum | cut -c1-16; }

# -- base layer: Debian packages ---------------------------------------------------------
packages=$(grep -v '^\s*#' "$here/packages.txt" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')
base_key=$( { sed -n '/^# -- base layer/,/^# -- app layer/p' "$0"; cat "$here/packages.txt"; echo "$suite"; } | hash_of)
base=$cache/base-$base_key.tar
if [ ! -s "$base" ]; then
  say "building the Debian base layer ($suite: $packages); takes a few minutes once"
  cni_keep=(portmap loopback bandwidth host-local)
  # merged /usr by mmdebstrap's own hook, not the usrmerge package (which drags in perl)
  opts=(--variant=essential --include="$packages" --format=tar --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr)
  for p in '/usr/share/man/*' '/usr/share/doc/*' '/usr/share/locale/*' '/usr/share/info/*' '/usr/lib/cni/*'; do
    opts+=(--dpkgopt="path-exclude=$p")
  done
  opts+=(--dpkgopt='path-include=/usr/share/doc/*/copyright')
  for p in "${cni_keep[@]}"; do opts+=(--dpkgopt="path-include=/usr/lib/cni/$p"); done
  opts+=(--customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/* "$1"/var/cache/ldconfig/aux-cache')
  mmdebstrap --quiet "${opts[@]}" "$suite" "$base.tmp" >"$cache/mmdebstrap.log" 2>&1 \
    || { tail -20 "$cache/mmdebstrap.log" >&2; rm -f "$base.tmp"; die "mmdebstrap failed (log: $cache/mmdebstrap.log)"; }
  mv "$base.tmp" "$base"
fi

# -- app layer: meshnet from this checkout ------------------------------------------------
deps=$("$python" -m pip freeze --exclude-editable 2>/dev/null | grep -iE '^(msgpack|cryptography|cffi|pycparser|pyroute2|docker|requests|urllib3|idna|certifi|charset-normalizer|dnspython|prometheus.client)==' | sort)
sources=$(cd "$root" && { git ls-files --cached --others --exclude-standard -- meshnet pyproject.toml setup.py cni/install.sh cni/10-meshnet.conflist image 2>/dev/null || find meshnet pyproject.toml setup.py cni image -type f; } | grep -vE '(^|/)__pycache__/|\.(so|c|pyc)$' | sort)
app_key=$( { (cd "$root" && sha256sum $sources README.md); echo "$deps"; echo "$pyver"; } | hash_of)
app=$cache/app-$app_key.tar
if [ ! -s "$app" ]; then
  say "building the meshnet layer (wheel with the compiled pump, dependencies)"
  work=$(mktemp -d "$cache/app.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  # from a copy of exactly the hashed files: a build/ dir left in the checkout never leaks in
  mkdir -p "$work/src"
  (cd "$root" && tar -cf - $sources README.md) | tar -xf - -C "$work/src"
  "$python" -m pip wheel -q --no-deps -w "$work/wheels" "$work/src" >"$work/wheel.log" 2>&1 || { cat "$work/wheel.log" >&2; die "building the meshnet wheel failed"; }
  site=$work/stage/usr/local/lib/python3.11/dist-packages
  echo "$deps" > "$work/constraints.txt"
  "$python" -m pip install -q --no-warn-script-location --target "$site" -c "$work/constraints.txt" "$work"/wheels/meshnet-*.whl >"$work/pip.log" 2>&1 \
    || { cat "$work/pip.log" >&2; die "installing meshnet and its dependencies into the image failed"; }
  find "$site/meshnet" \( -name '*.c' -o -name '*.pyx' -o -name '*.pxi' -o -name '*.pxd' \) -delete
  "$python" - "$site" <<'EOF' || die "the wheel lacks the compiled pump (meshnet/_fastpath)"
import glob, sys
sys.exit(0 if glob.glob(sys.argv[1] + "/meshnet/_fastpath*.so") else 1)
EOF
  rm -rf "$site/bin"
  mkdir -p "$work/stage/usr/local/bin" "$work/stage/opt/meshnet/cni"
  printf '#!/bin/sh\nexec python3 -m meshnet "$@"\n' > "$work/stage/usr/local/bin/meshnet"
  printf '#!/bin/sh\nexec python3 -m meshnet.cni "$@"\n' > "$work/stage/usr/local/bin/meshnet-cni"
  chmod 0755 "$work/stage/usr/local/bin/meshnet" "$work/stage/usr/local/bin/meshnet-cni"
  install -m 0755 "$root/cni/install.sh" "$work/stage/opt/meshnet/cni/install.sh"
  install -m 0644 "$root/cni/10-meshnet.conflist" "$work/stage/opt/meshnet/cni/10-meshnet.conflist"
  tar --sort=name --owner=0 --group=0 --numeric-owner -C "$work/stage" -cf "$app.tmp" usr opt
  mv "$app.tmp" "$app"
fi

# -- the image archive ----------------------------------------------------------------------
image_key=$( { echo "$base_key $app_key $tag"; cat "$here/archive.py"; } | hash_of)
archive=$cache/meshnet-image-$image_key.tar
if [ ! -s "$archive" ]; then
  say "writing the image archive ($tag)"
  "$python" "$here/archive.py" --tag "$tag" --version "$version" --out "$archive.tmp" "$base" "$app" || die "writing the image archive failed"
  mv "$archive.tmp" "$archive"
  # keep only the newest image and the layers it is made of
  for old in "$cache"/meshnet-image-*.tar "$cache"/base-*.tar "$cache"/app-*.tar; do
    case "$old" in "$archive"|"$base"|"$app") ;; *) rm -f "$old" ;; esac
  done
fi

for target in ${loads[@]+"${loads[@]}"}; do
  case "$target" in
    docker)
      say "docker load ($tag) into ${docker_host:-the default dockerd}"
      DOCKER_HOST=$docker_host docker load -q -i "$archive" >&2 || die "docker load failed" ;;
    containerd)
      say "ctr -n $namespace images import ($tag) into $ctr_address"
      ctr -a "$ctr_address" -n "$namespace" images import "$archive" >&2 || die "ctr images import failed" ;;
  esac
done
say "image $tag: $(du -h "$archive" | cut -f1)"
echo "$archive"
