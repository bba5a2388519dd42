"""The pure-Python twin of the sleeve pump: the executable specification.

`meshnet._fastpath.Pump` must behave exactly like `Pump` here: same API, same
forwarding, crypto and drop decisions, same datagrams on the wire, same counters. The
tests run both through the same cases and compare them byte for byte. The compiled pump
adds what only changes *how many syscalls* it takes (UDP GSO/GRO, merging TCP segments
into one TAP write); docs/sleeve.md lists those differences. Neither pump probes the
kernel: both take the `Offloads` that `meshnet.kernel.offload` set up (the twin uses
only `vnet_hdr`).

The rules live with the part that applies them, each module mirroring a part of the
compiled pump (`meshnet/_fastpath/*.pxi`):

- `pump`: the `Pump` class, its lock, the loop and the read batches (`_fastpath.pyx`,
  `loop.pxi`);
- `tap_side`: frames from the TAP: TSO segmentation, ICMP for frames too big for the
  underlay, unicast and flood forwarding (`tap.pxi`);
- `udp_side`: datagrams from the UDP socket: checks, opening, delivery, relaying
  (`udp.pxi`; the compiled pump also merges deliveries, `gro.pxi`);
- `peers`: routes, addresses, link keys, sealing for a next hop (`peers.pxi`; the AEAD
  itself is `meshnet.dataplane.sleeve_crypto`, `aead.pxi`);
- `macs`: the MAC table and its policy: learning, ageing, quotas, eviction (`macs.pxi`;
  the hash tables under it are `tables.pxi`);
- `sendq`: the send queue (`sendq.pxi`);
- `checksums`: inner-packet checksums and the CSUM rule (`checksums.pxi`).
"""

from meshnet.dataplane._pump_py.pump import Pump

__all__ = ["Pump"]
