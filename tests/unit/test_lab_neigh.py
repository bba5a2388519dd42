"""A large lab raises the machine's neighbour table by what it needs and puts it back."""

import pytest

from meshnet.lab import neigh


@pytest.fixture
def sysctl(tmp_path):
    d = tmp_path / "neigh"
    d.mkdir()
    (d / "gc_thresh2").write_text("512\n")
    (d / "gc_thresh3").write_text("1024\n")
    return d


def values(d) -> tuple[int, int]:
    return int((d / "gc_thresh2").read_text()), int((d / "gc_thresh3").read_text())


def test_a_small_lab_changes_nothing(sysctl, tmp_path):
    record = str(tmp_path / "run" / "neigh.json")
    neigh.reserve("small", 3, record=record, sysctl=str(sysctl))
    assert values(sysctl) == (512, 1024)
    neigh.release("small", record=record, sysctl=str(sysctl))
    assert values(sysctl) == (512, 1024)


def test_labs_add_up_and_the_last_one_restores(sysctl, tmp_path):
    record = str(tmp_path / "run" / "neigh.json")
    a, b = neigh.entries_needed(40), neigh.entries_needed(100)
    assert a >= 40 * 39 and b >= 100 * 99  # every router keeps an entry for every other host
    neigh.reserve("a", 40, record=record, sysctl=str(sysctl))
    assert values(sysctl) == (512 + a, 1024 + a)
    neigh.reserve("b", 100, record=record, sysctl=str(sysctl))
    assert values(sysctl) == (512 + a + b, 1024 + a + b)
    neigh.release("a", record=record, sysctl=str(sysctl))
    neigh.release("a", record=record, sysctl=str(sysctl))  # a second `lab down` is harmless
    assert values(sysctl) == (512 + b, 1024 + b)
    neigh.release("b", record=record, sysctl=str(sysctl))
    assert values(sysctl) == (512, 1024)


def test_values_changed_by_the_admin_between_labs_are_kept(sysctl, tmp_path):
    record = str(tmp_path / "run" / "neigh.json")
    neigh.reserve("a", 40, record=record, sysctl=str(sysctl))
    neigh.release("a", record=record, sysctl=str(sysctl))
    (sysctl / "gc_thresh3").write_text("4096\n")
    neigh.reserve("a", 40, record=record, sysctl=str(sysctl))
    neigh.release("a", record=record, sysctl=str(sysctl))
    assert values(sysctl) == (512, 4096)


def test_a_machine_that_cannot_raise_it_gets_a_warning_not_an_error(tmp_path, capsys):
    neigh.reserve("a", 40, record=str(tmp_path / "neigh.json"), sysctl=str(tmp_path / "absent"))
    assert "cannot raise the kernel's neighbour table" in capsys.readouterr().err


def test_a_damaged_record_is_started_afresh(sysctl, tmp_path):
    record = tmp_path / "neigh.json"
    record.write_text("{not json")
    neigh.reserve("a", 40, record=str(record), sysctl=str(sysctl))
    neigh.release("a", record=str(record), sysctl=str(sysctl))
    assert values(sysctl) == (512, 1024)
