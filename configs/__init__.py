"""Experiment configs: ``get_config(arg)`` files chosen by argument (see `common`)."""
