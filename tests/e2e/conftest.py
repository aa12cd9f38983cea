"""Shared fixtures for end-to-end runs: each tiny config's phantoms, written once a worker."""
import pytest


def _tiny_phantoms(tmp_path_factory, get_config, name: str) -> str:
    """A data root holding the phantoms ``get_config("tiny")`` trains on."""
    from radjax.train import experiment
    config = get_config("tiny")
    config.data.root = str(tmp_path_factory.mktemp(name))
    experiment.prepare_config(config)
    return config.data.root


@pytest.fixture(scope="session")
def rp3d_data(tmp_path_factory):
    from configs import rp3d_diag
    return _tiny_phantoms(tmp_path_factory, rp3d_diag.get_config, "rp3d_data")


@pytest.fixture(scope="session")
def radfm_data(tmp_path_factory):
    from configs import radfm
    return _tiny_phantoms(tmp_path_factory, radfm.get_config, "radfm_data")
