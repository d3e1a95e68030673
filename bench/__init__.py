"""MedMNIST-Bench: distributed hyperparameter search and honest benchmarking on MedMNIST."""

__version__ = "0.1.0"
