"""The sleeve pump's counters: their names, in the order both pumps report them.

This is their only copy. The twin counts into a dict made from `COUNTERS`; the compiled
pump's counter indexes (`TAP_RX`, ... `N_COUNTERS`) are generated from it at build time
(`meshnet/dataplane/pxi.py`). A frame or datagram the pump cannot handle is never an
error: it increments the drop counter named by its reason.
"""

COUNTERS = (
    "tap_rx",
    "tap_rx_bytes",
    "tap_tx",
    "tap_tx_bytes",
    "udp_rx",
    "udp_rx_bytes",
    "udp_tx",
    "udp_tx_bytes",
    "flood_tx",
    "unknown_unicast",
    "relayed",
    "learned",
    "unlearned",
    "learn_table_full",  # a new learned MAC found the table full (after reclaiming aged ones)
    "drop_short_frame",
    "drop_oversize",
    "drop_no_route",
    "drop_unknown_sender",
    "drop_short",
    "drop_version",
    "drop_type",
    "drop_unknown_peer",
    "drop_ttl",
    "drop_send_error",
    "drop_tap_write",
    # issue 5: crypto, offloads, MTU
    "drop_plaintext",  # an unsealed datagram on an encrypted pump
    "drop_sealed",  # a sealed datagram on an unencrypted pump
    "drop_no_key",  # no receive key for the sender's address and KEY_ID
    "drop_replay",  # counter seen before, or below the replay window
    "drop_auth",  # tag did not verify: tampered, truncated or wrongly keyed
    "drop_tx_no_key",  # no send key for the next hop: not sent
    "drop_key_exhausted",  # the next hop's send key reached REJECT_AFTER_MESSAGES
    "drop_bad_csum",  # CSUM set (or NEEDS_CSUM) where no checksum can be located
    "drop_bad_gso",  # a GSO frame from the TAP that cannot be segmented
    "gso_segments",  # segments cut from TSO frames read from the TAP
    "frag_needed",  # ICMP "fragmentation needed"/"packet too big" written to the TAP
    # issue 12: bounded MAC table with a policy (docs/sleeve.md, "The MAC table")
    "learn_over_quota",  # a new learned MAC from a peer that has its quota of learned MACs
    "learned_aged",  # learned MACs removed after mac_age seconds without a datagram from them
    "learned_evicted",  # learned MACs removed to make room for a gossiped (static) one
    "gro_frames",  # compiled pump only: TAP writes that merged >= 2 TCP segments
    "gro_segments",  # compiled pump only: segments inside those writes
    "gro_mixed",  # compiled pump, several threads: datagrams the kernel coalesced with another thread's flow
)
COMPILED_ONLY = ("gro_frames", "gro_segments", "gro_mixed")  # the twin never merges segments, runs one thread
