"""Run drivers: one fit, cross-validation, seed repeats and other-database tests."""
