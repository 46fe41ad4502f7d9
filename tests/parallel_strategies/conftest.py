import pytest

from ps_helpers import fixture_config


@pytest.fixture
def pro_full():
    return fixture_config("pangu_pro_moe_full")


@pytest.fixture
def ultra_full():
    return fixture_config("pangu_ultra_moe_full")
