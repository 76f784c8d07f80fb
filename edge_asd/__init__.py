"""edge-asd: detect failing machines by their sound, on a small computer next to the machine."""

__version__ = "0.1.0"
