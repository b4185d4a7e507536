"""``data.read_ahead_mb``: the cap raydeep hands Ray Train's DataConfig for the ingest; ``data.block_mb``."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from raydeep.config import DataConfig
from raydeep.trainers.launch import ingest_options


def test_read_ahead_caps_only_the_object_store():
    options = ingest_options(512)
    limits = options.resource_limits
    assert limits.object_store_memory == 512 * 2**20
    # CPU, GPU and heap stay Ray Data's to decide (infinite = autodetect from the cluster).
    assert limits.cpu == float("inf") and limits.gpu == float("inf") and limits.memory == float("inf")
    assert options.preserve_order is False
    assert ingest_options(0.5).resource_limits.object_store_memory == 2**19


def test_null_leaves_ray_datas_default():
    assert ingest_options(None) is None  # DataConfig then applies its default_ingest_options()


def test_config_default_and_bounds():
    assert DataConfig(train="a", val="b").read_ahead_mb == 512
    assert DataConfig(train="a", val="b", read_ahead_mb=None).read_ahead_mb is None
    for bad in (0, -1):
        with pytest.raises(ValidationError, match="read_ahead_mb"):
            DataConfig(train="a", val="b", read_ahead_mb=bad)


def test_block_mb_default_bounds_and_bytes():
    from types import SimpleNamespace

    from raydeep.trainers.launch import block_bytes

    assert DataConfig(train="a", val="b").block_mb == 32
    assert block_bytes(SimpleNamespace(data=DataConfig(train="a", val="b"))) == 32 * 2**20
    assert block_bytes(SimpleNamespace(data=DataConfig(train="a", val="b", block_mb=None))) is None
    assert block_bytes(SimpleNamespace(data=DataConfig(train="a", val="b", block_mb=0.5))) == 2**19
    for bad in (0, -1):
        with pytest.raises(ValidationError, match="block_mb"):
            DataConfig(train="a", val="b", block_mb=bad)
