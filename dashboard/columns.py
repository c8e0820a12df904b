"""Omniboard set up for ODEnet/ResNet comparisons: the run table's columns and its refresh interval.

Omniboard keeps custom columns (a name and a path into the run document) and metric columns (a metric
reduced by min/max/last/average) in collections of the runs database; the run table shows them to every
browser. They are seeded once per database, so a column a user removes in Omniboard stays removed.
"""
from __future__ import annotations

from typing import Any

# (column name, path into the run document). Paths follow what the runner records: meta.choices are the
# config options a run was composed from, info.cost is updated every epoch, result is the test accuracy.
CUSTOM_COLUMNS = [
    ("model", "meta.choices.model"),
    ("dataset", "meta.choices.data"),
    ("solver", "config.solver.method"),
    ("rtol", "config.solver.rtol"),
    ("adjoint", "config.solver.adjoint"),
    ("test acc", "result"),
    ("FNFE (mean)", "info.cost.fnfe"),
    ("BNFE (mean)", "info.cost.bnfe"),
    ("s/epoch", "info.cost.epoch_time"),
    ("params", "info.parameters.total"),
    ("params not in FC", "info.parameters.not_in_fc"),
    ("sweep", "meta.sweep_id"),
    ("trial", "meta.trial"),
]
# (column name, metric, reduction over the epochs)
METRIC_COLUMNS = [
    ("best val loss", "val.loss", "min"),
    ("best val acc", "val.acc", "max"),
]
# Omniboard polls for new and running runs; its default of 30 s makes a live run look stuck.
SETTINGS = {"auto_refresh_interval": 10}
MARKER_COLLECTION = "odeflow.dashboard"


def seed_omniboard(db: Any) -> bool:
    """Write the columns and settings into database `db` unless done before; True when it wrote them."""
    marker = db[MARKER_COLLECTION]
    if marker.find_one({"_id": "omniboard_columns"}) is not None:
        return False
    custom = db["omniboard.custom.columns"]
    for name, path in CUSTOM_COLUMNS:
        custom.update_one({"name": name}, {"$set": {"name": name, "config_path": path}}, upsert=True)
    metric = db["omniboard.metric.columns"]
    for name, metric_name, extrema in METRIC_COLUMNS:
        metric.update_one({"name": name}, {"$set": {"name": name, "metric_name": metric_name, "extrema": extrema,
                                                    "lastn": 1}}, upsert=True)
    settings = db["omniboard.settings"]
    for name, value in SETTINGS.items():
        settings.update_one({"name": name}, {"$set": {"name": name, "value": value}}, upsert=True)
    marker.insert_one({"_id": "omniboard_columns", "custom": len(CUSTOM_COLUMNS), "metric": len(METRIC_COLUMNS)})
    return True
