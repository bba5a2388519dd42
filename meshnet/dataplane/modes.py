"""The data path towards one peer, as a value: status, metrics and the CLI read it."""

from __future__ import annotations

from enum import Enum


class PathMode(str, Enum):
    FASTDP = "fastdp"  # kernel VXLAN
    SLEEVE = "sleeve"  # the userspace pump, plain
    SLEEVE_ENCRYPTED = "sleeve+encrypted"  # the pump, AES-256-GCM per datagram

    @property
    def label(self) -> str:
        """The metrics label: fastdp, sleeve or encrypted."""
        return "encrypted" if self is PathMode.SLEEVE_ENCRYPTED else self.value

    @classmethod
    def of(cls, path: str, *, encrypted: bool) -> PathMode:
        """From fastdp's per-peer answer (`fastdp.FASTDP` or `fastdp.SLEEVE`)."""
        if path == cls.FASTDP.value:
            return cls.FASTDP
        return cls.SLEEVE_ENCRYPTED if encrypted else cls.SLEEVE
