"""Shared fixtures for end-to-end runs of the RP3D-Diag tiny config."""
import pytest


@pytest.fixture(scope="session")
def rp3d_data(tmp_path_factory):
    """One phantom data root for every end-to-end test (written once per worker)."""
    from configs import rp3d_diag
    from radjax.train import experiment
    config = rp3d_diag.get_config("tiny")
    config.data.root = str(tmp_path_factory.mktemp("rp3d_data"))
    experiment.prepare_config(config)
    return config.data.root


@pytest.fixture(scope="session")
def radfm_data(tmp_path_factory):
    """RadFM phantoms for the end-to-end tests (the tiny config's files, written once)."""
    from configs import radfm
    from radjax.train import experiment
    config = radfm.get_config("tiny")
    config.data.root = str(tmp_path_factory.mktemp("radfm_data"))
    experiment.prepare_config(config)
    return config.data.root
