"""Health as the router reports it (status, /health, metrics): the timer watchdog, the
pump's thread, supervised tasks that died; and the tables' limits and conflicts as metrics."""

import threading
from types import SimpleNamespace

from meshnet.runtime import metrics, status
from meshnet.runtime.supervise import Supervisor


def router(*, timer_age=0.1, pump_alive=True, dead=()):
    thread = threading.Thread(target=lambda: None)
    if pump_alive:
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait, daemon=True)
        thread.start()
    sup = Supervisor()
    sup.dead.update(dead)
    timer = SimpleNamespace(age=lambda: timer_age, failures={"mesh": 0})
    return SimpleNamespace(timer=timer, sleeve=SimpleNamespace(alive=thread.is_alive), supervisor=sup)


def test_healthy():
    h = status.health(router())
    assert h["healthy"] and h["reasons"] == [] and h["pump_alive"]


def test_a_stalled_timer_a_dead_pump_and_a_dead_thread_are_each_named():
    h = status.health(router(timer_age=status.WATCHDOG_S + 1, pump_alive=False, dead={"meshnet-docker-watch", "meshnet-pump"}))
    assert not h["healthy"]
    assert h["reasons"] == ["timer_stalled", "pump_stopped", "dead:meshnet-docker-watch"]
    h = status.health(router(dead={"meshnet-pump-1"}))  # a second pump thread is the pump too
    assert h["reasons"] == []


def test_health_and_tables_as_metrics():
    snap = {
        "health": {
            "healthy": False,
            "timer_age_s": 12.5,
            "pump_alive": False,
            "timer_failures": {"mesh": 2},
            "supervision": {"failures": {"dial": 3}, "restarts": {"timer": 1}, "dead": []},
        },
        "log_suppressed": {"handshake-error": 297},
        "limits": {"peers": 4, "max_peers": 4096, "endpoints": 17410, "max_endpoints": 131072, "local_endpoints": 1,
                   "max_peer_endpoints": 1024, "endpoints_over_quota": 3072, "endpoints_table_full": 0, "peers_table_full": 0},
        "conflicts": {"current": 2, "detected": 3, "list": []},
        "counters": {"protocol_errors": 7},
    }
    got = {}
    for family in metrics.families(snap):
        for sample in family.samples:
            got[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert got[("meshnet_healthy", ())] == 0
    assert got[("meshnet_timer_watchdog_age_seconds", ())] == 12.5
    assert got[("meshnet_pump_running", ())] == 0
    assert got[("meshnet_timer_job_failures_total", (("job", "mesh"),))] == 2
    assert got[("meshnet_supervised_failures_total", (("task", "dial"),))] == 3
    assert got[("meshnet_supervised_restarts_total", (("task", "timer"),))] == 1
    assert got[("meshnet_log_suppressed_total", (("event", "handshake-error"),))] == 297
    assert got[("meshnet_protocol_errors_total", ())] == 7
    assert got[("meshnet_table_entries", (("table", "endpoints"),))] == 17410
    assert got[("meshnet_table_limit", (("table", "peers"),))] == 4096
    assert got[("meshnet_gossip_not_stored_total", (("reason", "endpoint_over_quota"),))] == 3072
    assert got[("meshnet_address_conflicts", ())] == 2
    assert got[("meshnet_address_conflicts_detected_total", ())] == 3
