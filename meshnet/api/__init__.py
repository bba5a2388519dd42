"""The local API: JSON over HTTP/1.1 on a unix socket. `server` is the router's transport,
`client` the blocking client the CLI, the CNI plugin and the lab use."""
