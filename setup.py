"""Lists tailor's packages: each top-level folder is a subpackage of `tailor`.

pyproject.toml maps the folders (package-dir); setuptools' own finder cannot
prefix them, so the list is derived here, once, from the tree.
"""
from setuptools import find_packages, setup

FOLDERS = {"operator": "tailor.operator", "datapath": "tailor.datapath", "lab": "tailor.lab",
           "cli": "tailor.cli"}

packages = []
for folder, name in FOLDERS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(where=folder)]

setup(packages=packages, package_data={"tailor.datapath": ["**/*.proto"]})
