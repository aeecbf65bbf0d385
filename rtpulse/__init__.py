"""rtpulse: real-time speech denoising with a PULSE-trained CNN mask (Ito & Sugiyama, arXiv 2210.15143)."""

__version__ = "0.1.0"
