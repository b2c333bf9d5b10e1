"""Datasets as LightningDataModules. Each option of the `data` config group is one module here."""
