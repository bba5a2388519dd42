"""The compiled pump's C constants, generated from layout.py and counters.py."""

import re

from meshnet.dataplane import counters, layout, pxi


def test_every_layout_integer_becomes_a_c_constant():
    text = pxi.render()
    for name, value in vars(layout).items():
        if name.isupper() and isinstance(value, int):
            small = f"    {name} = {value}\n" in text
            big = f"#define MN_{name} {value}ULL" in text and f'unsigned long long {name} "MN_{name}"' in text
            assert small or big, name


def test_counter_indexes_follow_the_counter_names():
    text = pxi.render()
    block = text[text.index("# meshnet/dataplane/counters.py") :]
    names = re.findall(r"^    ([A-Z0-9_]+)$", block, re.M)
    assert names == [c.upper() for c in counters.COUNTERS] + ["N_COUNTERS"]


def test_the_digest_follows_the_source(monkeypatch):
    before = pxi.digest()
    assert f"CONSTANTS_DIGEST = {before} " in pxi.render()
    monkeypatch.setattr(layout, "DEFAULT_TTL", layout.DEFAULT_TTL + 1)
    assert pxi.digest() != before


def test_write_rewrites_only_a_changed_file(tmp_path):
    path = str(tmp_path / "part" / "constants.pxi")
    assert pxi.write(path)
    assert not pxi.write(path)
    with open(path) as f:
        assert f.read() == pxi.render()
