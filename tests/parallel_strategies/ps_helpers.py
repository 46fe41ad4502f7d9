import importlib
import json
import os


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# strategy model (arch, preset) -> released config.json values (MODELS.md), used until the config classes land
STAND_INS = {("pangu_pro_moe", "full"): "pangu_pro_moe_full", ("pangu_pro_moe", "tiny"): "pangu_pro_moe_tiny",
             ("pangu_ultra_moe", "full"): "pangu_ultra_moe_full", ("mindvl", "full"): "mindvl_qwen2_5_vl_7b_layout"}


def fixture_config(name):
    with open(os.path.join(FIXTURES, name + ".json"), encoding="utf-8") as f:
        return json.load(f)


def registry_config(arch, preset):
    """The real config class from pangu.registry, or None while it does not exist yet."""
    try:
        return importlib.import_module("pangu.registry").get_config(arch, preset)
    except Exception:  # noqa: BLE001 - registry / arch not written yet
        return None


def config_for(model: dict):
    """Real config when the registry has it, else the published numbers."""
    cfg = registry_config(model["arch"], model.get("preset", "full"))
    return cfg if cfg is not None else fixture_config(STAND_INS[(model["arch"], model.get("preset", "full"))])


