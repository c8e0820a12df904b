"""The local dashboard: a MongoDB-compatible server and Omniboard, with no Docker.

`python -m dashboard` (`make dashboard`) starts SecantusDB (MongoDB's wire protocol over WiredTiger) on
127.0.0.1 with SCRAM authentication, pushes every run of the file store and the journal into it, seeds
Omniboard's columns for ODEnet/ResNet comparisons, starts a pinned Omniboard and waits in the foreground.

SecantusDB is GPL-2.0 and comes with the optional `dashboard` extra: only this package imports it; the
runner talks to any MongoDB through pymongo and never imports this package.
"""
