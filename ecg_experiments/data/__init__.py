"""Data sources, splits and DataModules."""
