"""edge_sdk: QAT Gemma 4 checkpoints → LiteRT models for phones; validate; ship.

Stages (each a subpackage, each returning a frozen dataclass the next consumes):
checkpoint → spec → quant → litert → bundle / validate.  See README.md.
"""

__version__ = "0.1.0"
