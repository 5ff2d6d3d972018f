"""Avaya Aura AES DMCC (XML) adapter; see docs/avaya.md."""

from bridge.pbx.avaya.adapter import AvayaAdapter

__all__ = ["AvayaAdapter"]
