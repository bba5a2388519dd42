"""Persistence: the state dir (lock, peer name, settings), and what the router keeps on disk.

  statedir    the state dir itself: the lock, the peer name, persisted settings
  ipam_store  `SqliteStore`: the IPAM core's `Store` (`meshnet/ipam/store.py`), in `ipam.db`
  journal     releases the CNI plugin records while the router is down; the runtime drains
              it into the allocator (`Allocator.release_journalled`)

The sans-IO cores do no I/O themselves; the runtime opens these and hands them over. This
package imports nothing on purpose: `meshnet.state.journal` is stdlib only, so the CNI
plugin can import it cheaply.
"""
