#!/bin/sh
# Install meshnet's CNI plugin: the `meshnet-cni` executable into the CNI bin dir and a
# conflist (meshnet-cni chained with the reference portmap and bandwidth) into the CNI
# config dir. Both are written atomically (temp file + rename), so a runtime watching the
# dirs never reads half a file. Safe to run again (upgrade); --uninstall removes both.
#
#   cni/install.sh [--bin-dir /opt/cni/bin] [--conf-dir /etc/cni/net.d] [--python PY]
#                  [--conflist FILE | --no-conflist] [--name 10-meshnet.conflist]
#                  [--host-root /host] [--copy-runtime /opt/meshnet] [--source DIR] [--uninstall]
#
# --python       the Python that has meshnet installed (default: python3 on PATH); the
#                installed plugin runs it by absolute path, so runtimes need no PATH.
# --source       run meshnet from this source tree (PYTHONPATH) rather than the Python's
#                site-packages; the default when that Python cannot import meshnet and
#                this script sits in a meshnet checkout.
# --host-root    prefix of the host's / (a DaemonSet mounts the host there); the plugin
#                and the conflist then name paths as the host sees them.
# --copy-runtime copy this Python (interpreter, stdlib, libpython, and meshnet + pyroute2 as
#                its only site-packages; venv or not) to DIR on the host and run the plugin
#                from there: how the DaemonSet's init container puts a Python plugin onto a
#                host without one. The host needs a glibc at least as new as the source's.
# The conflist's meshnet entry takes MESHNET_SOCKET, MESHNET_STATE_DIR, MESHNET_BRIDGE and
# MESHNET_CNI_MTU from the environment when they are set.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
bin_dir=/opt/cni/bin
conf_dir=/etc/cni/net.d
python=${MESHNET_PYTHON:-python3}
conflist=$here/10-meshnet.conflist
name=10-meshnet.conflist
host_root=
runtime=
uninstall=0
source=
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --conf-dir) conf_dir=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --conflist) conflist=$2; shift 2 ;;
    --no-conflist) conflist=; shift ;;
    --name) name=$2; shift 2 ;;
    --host-root) host_root=${2%/}; shift 2 ;;
    --copy-runtime) runtime=${2%/}; shift 2 ;;
    --source) source=$(cd "$2" && pwd); shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

bin=$host_root$bin_dir
conf=$host_root$conf_dir
if [ "$uninstall" = 1 ]; then
  rm -f "$bin/meshnet-cni" "$conf/$name"
  echo "meshnet-cni removed from $bin and $conf"
  exit 0
fi

py=$(command -v "$python" || true)
[ -n "$py" ] || { echo "install.sh: no Python at $python" >&2; exit 1; }
if [ -z "$source" ] && ! (cd / && "$py" -c 'import meshnet.cni.plugin' 2>/dev/null) && [ -f "$here/../meshnet/cni/plugin.py" ]; then
  source=$(cd "$here/.." && pwd)
fi
(cd / && PYTHONPATH=$source "$py" -c 'import meshnet.cni.plugin') || { echo "install.sh: $py cannot import meshnet" >&2; exit 1; }

copy_runtime='
import importlib.util, os, shutil, sys, sysconfig
dest, source = sys.argv[1], sys.argv[2]
ver = "python%d.%d" % sys.version_info[:2]
stdlib = sysconfig.get_paths()["stdlib"]
skip = {"site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3"}
shutil.copytree(stdlib, dest + "/lib/" + ver, symlinks=True,
                ignore=lambda d, names: [n for n in names if d == stdlib and (n in skip or n.startswith("config-"))])
site = dest + "/lib/" + ver + "/site-packages"
for mod in ("meshnet", "pyroute2"):
    if source and mod == "meshnet":
        src = os.path.join(source, mod)
    else:
        src = importlib.util.find_spec(mod).submodule_search_locations[0]
    shutil.copytree(src, site + "/" + mod, ignore=shutil.ignore_patterns("*.c", "*.pyx", "*.pxd", "build"))
os.makedirs(dest + "/bin")
shutil.copy2(os.path.realpath(sys.executable), dest + "/bin/python3")
if sysconfig.get_config_var("Py_ENABLE_SHARED"):
    soname = sysconfig.get_config_var("INSTSONAME")
    shutil.copy2(os.path.realpath(os.path.join(sysconfig.get_config_var("LIBDIR"), soname)), dest + "/lib/" + soname)
'

if [ -n "$runtime" ]; then
  # a private, relocatable Python for the plugin: the interpreter, its stdlib, libpython,
  # and in site-packages only what the plugin imports (meshnet, pyroute2)
  tmp=$host_root$runtime.new.$$
  rm -rf "$tmp"
  (cd / && PYTHONPATH=$source "$py" -c "$copy_runtime" "$tmp" "$source") || {
    echo "install.sh: copying the Python runtime failed" >&2; rm -rf "$tmp"; exit 1; }
  rm -rf "$host_root$runtime.old"
  if [ -e "$host_root$runtime" ]; then mv "$host_root$runtime" "$host_root$runtime.old"; fi
  mv "$tmp" "$host_root$runtime"
  rm -rf "$host_root$runtime.old"
  # site-packages by PYTHONPATH: a Debian Python (the image's) looks only in dist-packages
  site="$runtime/lib/$(cd / && "$py" -c 'import sys; print("python%d.%d" % sys.version_info[:2])')/site-packages"
  launcher="export PYTHONHOME='$runtime' PYTHONPATH='$site' LD_LIBRARY_PATH='$runtime/lib'; exec '$runtime/bin/python3' -s -m meshnet.cni \"\$@\""
else
  launcher="${source:+export PYTHONPATH='$source'; }exec '$py' -m meshnet.cni \"\$@\""
fi

mkdir -p "$bin" "$conf"
tmp=$bin/.meshnet-cni.$$
cat > "$tmp" <<EOF
#!/bin/sh
# meshnet-cni, written by meshnet's cni/install.sh; rerun it to upgrade.
$launcher
EOF
chmod 0755 "$tmp"
mv -f "$tmp" "$bin/meshnet-cni"

# the plugin must answer VERSION before a runtime is pointed at it
if [ -z "$host_root" ]; then
  out=$(echo '{"cniVersion":"1.0.0"}' | CNI_COMMAND=VERSION "$bin/meshnet-cni") || {
    echo "install.sh: $bin/meshnet-cni does not answer VERSION: $out" >&2; exit 1; }
fi

if [ -n "$conflist" ]; then
  tmp=$conf/.meshnet-conflist.$$
  "$py" - "$conflist" "$tmp" <<'EOF'
import json, os, sys
src, dst = sys.argv[1:3]
with open(src) as f:
    conf = json.load(f)
entry = next(p for p in conf["plugins"] if p.get("type") == "meshnet-cni")
for env, key, kind in (("MESHNET_SOCKET", "socket", str), ("MESHNET_STATE_DIR", "state_dir", str),
                       ("MESHNET_BRIDGE", "bridge", str), ("MESHNET_CNI_MTU", "mtu", int)):
    if os.environ.get(env):
        entry[key] = kind(os.environ[env])
with open(dst, "w") as f:
    json.dump(conf, f, indent=2)
    f.write("\n")
EOF
  mv -f "$tmp" "$conf/$name"
fi
echo "meshnet-cni installed: $bin/meshnet-cni${conflist:+, $conf/$name}"
