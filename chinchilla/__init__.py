"""chinchilla: plan, train and fit compute-optimal scaling-law experiments.

The stages, one module each, with imports pointing down this flow only:
config -> grid -> train -> sweep -> store -> fit -> predict / plots.
"""

__version__ = "0.1.0"
