"""musinterp: open up music models (activations, sparse autoencoders, feature reports)."""

__version__ = "0.1.0"
PRODUCER = f"musinterp {__version__}"
