"""Names for containers: `NAME.DOMAIN` answered by a resolver in every router.

`answer` is the sans-IO core (bytes in, bytes out); `server` binds it to UDP/TCP 53.
The name table comes from the gossiped endpoints (router `GET /endpoints`, `mesh` list).
"""
