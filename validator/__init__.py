"""The gate: read datasets, render them through chat templates, tokenize, and check. Imports no torch."""
