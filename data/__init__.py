"""Datasets as LightningDataModules. Each one tells the model what it needs to know (`net_kwargs`)."""


class UserInputError(Exception):
    """Bad user input (missing file, wrong column, corrupt data): train.py prints it as one line."""
