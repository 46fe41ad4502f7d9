import json
import os

import models

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def fixture_config(name):
    """A released config.json (MODELS.md values) from fixtures/, as a dict."""
    with open(os.path.join(FIXTURES, name + ".json"), encoding="utf-8") as f:
        return json.load(f)


def registry_config(arch, preset):
    """The architecture's preset config (models registry)."""
    return models.get_config(arch, preset)


def config_for(model: dict):
    """The config a strategy's `model:` section names."""
    return registry_config(model["arch"], model.get("preset", "full"))
