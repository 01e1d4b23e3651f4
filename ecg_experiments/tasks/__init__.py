"""What each command does, as library functions tests and scripts call directly.

`python -m ecg_experiments.<command>` modules only compose the config and import these
after it, so that `--help`, `--cfg` and config errors answer before torch and Lightning load.
"""
