"""Docker integration: the Engine API client wrapper (`engine`), containers attached by
`meshnet attach/run` (`containers`), the libnetwork remote NetworkDriver + IpamDriver
(`cnm`), their wiring into the router (`service`) and the CLI (`cli`). docs/docker.md.
"""
