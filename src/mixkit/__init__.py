"""mixkit: Mixture-of-Experts layers and Mixture-of-Agents pipelines."""

__version__ = "0.1.0"
