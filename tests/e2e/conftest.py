"""Shared fixtures for end-to-end runs: any paper's tiny phantoms, written once a worker."""

import importlib

import pytest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """``tiny_data(paper)``: a data root holding the phantoms ``configs/<paper>.py:tiny``
    trains on (written on first use, then shared by the worker's tests)."""
    from radjax.train import experiment

    roots = {}

    def root(paper: str) -> str:
        if paper not in roots:
            config = importlib.import_module(f"configs.{paper}").get_config("tiny")
            config.data.root = str(tmp_path_factory.mktemp(f"{paper}_data"))
            experiment.prepare_config(config)
            roots[paper] = config.data.root
        return roots[paper]

    return root
