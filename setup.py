"""The optional native part: shoal runs without it (see src/shoal/worker/launcher.py)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("shoal.worker._launcher", ["src/shoal/worker/_launcher.c"],
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
                             optional=True)])
