"""safety-heads: find and ablate the attention heads an aligned chat model's refusals hang on.

An implementation of Zhou et al., "On the Role of Attention Heads in Large Language Model Safety"
(ICLR 2025, arXiv 2410.13708): Ships, generalized Ships, Sahara, and the UA / SC head ablations.
"""

__version__ = "0.1.0"
