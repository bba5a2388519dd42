"""Write an image archive in `docker save` format from layer tars (stdlib only).

    python3 image/archive.py --tag meshnet/meshnet:0.1.0 --version 0.1.0 --out IMG.tar BASE.tar APP.tar

`docker load` (any dockerd from 20.10) and `ctr images import` (containerd's docker.v1.2
importer) both read it. Layout: `manifest.json` (config, tag, layer paths),
`<sha256 of config>.json` (the image config: rootfs diff ids, env, cmd, labels) and
`<sha256 of layer>/layer.tar` per layer, uncompressed, so each layer's diff id is simply
the sha256 of its file. Called by image/build.sh, which caches the layers.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tarfile
import time

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def image_config(diff_ids: list[str], *, version: str) -> dict:
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {
            "Env": [f"PATH={PATH}", "PYTHONDONTWRITEBYTECODE=1"],
            "Cmd": ["meshnet", "launch", "--foreground"],
            "Labels": {
                "org.opencontainers.image.title": "meshnet",
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.description": "meshnet router and CNI plugin (Debian 12)",
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [{"created_by": "image/build.sh: Debian 12 base (mmdebstrap)"}, {"created_by": "image/build.sh: meshnet from the checkout"}],
    }


def write(out: str, layers: list[str], *, tag: str, version: str) -> None:
    digests = [sha256_file(path) for path in layers]
    config = json.dumps(image_config(digests, version=version), sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [f"{d}/layer.tar" for d in digests]}]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:

        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))

        for path, digest in zip(layers, digests):
            directory = tarfile.TarInfo(digest)
            directory.type, directory.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(directory)
            add_bytes(f"{digest}/VERSION", b"1.0")
            tar.add(path, arcname=f"{digest}/layer.tar", recursive=False)
        add_bytes(config_name, config)
        add_bytes("manifest.json", json.dumps(manifest).encode())
        repo, _, name_tag = tag.rpartition(":")
        if repo and "/" not in name_tag:
            add_bytes("repositories", json.dumps({repo: {name_tag: digests[-1]}}).encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("layers", nargs="+", help="layer tars, base first")
    args = parser.parse_args()
    for path in args.layers:
        if not os.path.isfile(path):
            parser.error(f"no layer file {path}")
    write(args.out, args.layers, tag=args.tag, version=args.version)


if __name__ == "__main__":
    main()
