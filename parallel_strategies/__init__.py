"""Parallel strategies: strategy files and the code that validates, simulates, searches, applies and
launches them. Reads every model fact from its architecture's ModelSpec (parallel_strategies.shape);
the model code never imports this package."""
from .shape import ModelShape, count_parameters, model_shape, parameter_shapes, parameters, resolve_config
from .strategy import Hardware, Strategy, load_hardware, load_strategy, validate_structure
from .simulate import Result, check_memory, simulate

__all__ = ["ModelShape", "model_shape", "parameters", "parameter_shapes", "count_parameters", "resolve_config",
           "Strategy", "Hardware", "load_strategy", "load_hardware", "validate_structure", "simulate",
           "check_memory", "Result"]
