"""popalign: margin-aware alignment of language models from preference-over-preference (PoP) labels.

Importing the package is cheap: heavy libraries (torch, transformers) load only where used.
"""

__version__ = "0.1.0"
