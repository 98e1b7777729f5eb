"""Cache sizes as sysfs writes them: the rotation target is 4x their sum, so a size misread by
5% (a binary unit read as decimal) leaves part of the working set cached."""
from backends.cpu import _parse_size


def test_sysfs_sizes_are_binary_units():
    assert _parse_size("48K\n") == 48 * 1024
    assert _parse_size("32M") == 32 * 1024**2
    assert _parse_size("1G") == 1024**3
    assert _parse_size("2048") == 2048
