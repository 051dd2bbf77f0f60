from guestout import parse


def test_key_values_and_blocks():
    out = "noise\n@@a=1\n@@log<<\nline one\n@@rc=3\nline two\n@@>>\n@@b=\n"
    assert parse(out) == {"a": "1", "log": "line one\nline two", "rc": "3", "b": ""}
