"""Specialization for a device: efficiency models, accuracy predictors and search."""

from onceforall.cost import LayerTable, count_macs, count_params, distinct_specs

__all__ = ["LayerTable", "count_macs", "count_params", "distinct_specs"]
