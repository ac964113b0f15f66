"""Inverse Engineering Diffusion: variance schedules from rationales, trained and sampled end to end."""
__version__ = "0.1.0"
