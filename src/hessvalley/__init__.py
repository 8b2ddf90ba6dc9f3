"""hessvalley: SGD noise and the Hessian of the loss, as a cached Snakemake workflow."""

__version__ = "0.1.0"
