"""meshnet's benchmark suite (`python -m bench`): container to container first, then host to
host beside kernel VXLAN and other overlays, more hosts and a relayed path, all measured
round-robin in one run on simulated hosts (network namespaces, `meshnet.lab`).

    __main__      the command: run, list, table, render, clean
    plan          the tests, their lengths and rounds; the run laid out round-robin
    catalog       every path: name, bed, group (ctr/host/multi), family (meshnet/baseline/peer)
    bed           a Lab plus what the suite adds (daemons, namespaces), a ledger for `clean`
    meshnet_beds  meshnet's paths: routers, `meshnet attach` containers, `meshnet expose`
    bare_bed      the underlay, kernel VXLAN by hand (host and containers), and the peers:
    peers         tinc, nebula, fastd, wireguard-go (packaged and by path)
    tools         iperf3 and ping inside namespaces, their parsers
    procstat      CPU seconds of each daemon and of the box from /proc
    runner        build, check, measure with progress, write results, tear down
    aggregate     medians, spreads, CPU-s per GB, ratios
    targets       ratios within the run, issue 16's targets checked
    report        the markdown table; charts: the PNGs; render: docs/benchmarks.md
    progress      one line per measurement, with an ETA

Also here, run separately: test_micro.py (pytest-benchmark, the pump per frame, no root),
gossip_scale.py (the control plane at scale), router_scale.py (100 real routers) and
endpoint_scale.py (100,000 gossiped endpoints on real routers, with kernel_fdb.py; docs/scaling.md).
"""
