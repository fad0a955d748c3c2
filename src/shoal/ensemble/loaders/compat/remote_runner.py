"""What `import remote_runner` gives a configuration or muddler: the same names the real
tool puts in their namespace."""

from __future__ import annotations

from shoal.ensemble.loaders.compat import config_classes, config_util
from shoal.ensemble.loaders.compat.config_classes import Component, Config
from shoal.ensemble.loaders.compat.config_util import recursive_files_dict

util = config_util

__all__ = ["Component", "Config", "config_classes", "config_util", "recursive_files_dict",
           "util"]
