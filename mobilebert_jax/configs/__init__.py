"""Run recipes as ml_collections config files, one per task family (`get_config(variant)`).

They are plain modules of the package, so `--config=configs/glue.py:task=rte` works from a
checkout and from an installed wheel alike (the command lines resolve `configs/NAME.py` here when
no such file exists relative to the current directory); copy one anywhere to fork a recipe.
"""
