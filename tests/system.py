"""Tests that need a system facility (root, mount, ip netns) skip without it, unless
SHOAL_REQUIRE_SYSTEM_TESTS=1 (as in CI), where a missing facility is a failure."""

from __future__ import annotations

import os
import shutil

import pytest


def require(condition: bool, what: str) -> None:
    if condition:
        return
    if os.environ.get("SHOAL_REQUIRE_SYSTEM_TESTS") == "1":
        pytest.fail(f"{what} is required (SHOAL_REQUIRE_SYSTEM_TESTS=1)")
    pytest.skip(f"{what} is not available")


def require_root_tool(tool: str) -> None:
    require(os.geteuid() == 0, "root")
    require(shutil.which(tool) is not None, tool)
