"""remote_runner's config_util: helpers for writing configuration files."""

from __future__ import annotations

import os


def recursive_files_dict(src_path: str, dest_path: str) -> dict[str, str]:
    """A `files` dict for every file under src_path, placed at the same relative path under
    dest_path ('.' for the component's base_dir). Relative src paths are taken from the
    configuration file's directory, where the configuration runs."""
    files: dict[str, str] = {}
    for dirpath, _dirnames, filenames in os.walk(src_path):
        for filename in filenames:
            file_path = os.path.join(dirpath, filename)
            files[file_path] = os.path.join(dest_path, os.path.relpath(file_path, src_path))
    return files
