"""Omniboard set up for ODEnet/ResNet comparisons: the run table's columns and its refresh interval.

Omniboard keeps custom columns (a name and a path into the run document) in a collection of the runs
database; the run table shows them to every browser. They are seeded once per database, so a column a
user removes in Omniboard stays removed.
"""

from __future__ import annotations

from typing import Any

from runner.tracking.mongo import table_fields

# Custom columns over the top-level fields the runner's MongoDB observer writes first into every run
# document (runner.tracking.mongo.table_fields), so the table opens with them beside the run id.
CUSTOM_COLUMNS = [(name, name) for name in table_fields({}, {})]
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
    settings = db["omniboard.settings"]
    for name, value in SETTINGS.items():
        settings.update_one({"name": name}, {"$set": {"name": name, "value": value}}, upsert=True)
    marker.insert_one({"_id": "omniboard_columns", "custom": len(CUSTOM_COLUMNS)})
    return True
