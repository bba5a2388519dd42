"""meshnet: a self-configuring container overlay network."""

__version__ = "0.1.0"
