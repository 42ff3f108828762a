"""Drives a live migration between two Kestrels with qemu.qmp's QMPClient, as a
manager using QEMU's own Python tooling would, and checks the MIGRATION event sequence
of both sides against the spec (events.md, runstate.md).

usage: migration_client.py SOURCE_SOCKET DEST_SOCKET URI
(the destination started with -incoming defer). Prints one line per check; exits
non-zero on the first failure.
"""
import asyncio
import sys

from qemu.qmp import QMPClient, ExecuteError


async def statuses(listener, final=("completed", "failed", "cancelled")):
    """MIGRATION statuses, and the other events seen, until a final status."""
    seen, others = [], []
    while True:
        ev = await asyncio.wait_for(listener.get(), 60)
        if ev["event"] == "MIGRATION":
            seen.append(ev["data"]["status"])
            if seen[-1] in final:
                return seen, others
        else:
            others.append(ev["event"])


async def main(src_sock: str, dst_sock: str, uri: str) -> None:
    src, dst = QMPClient("source"), QMPClient("destination")
    await src.connect(src_sock)
    await dst.connect(dst_sock)
    for q in (src, dst):
        await q.execute("migrate-set-capabilities",
                        {"capabilities": [{"capability": "events", "state": True}]})
    caps = await src.execute("query-migrate-capabilities")
    assert {"capability": "events", "state": True} in caps, caps

    status = await dst.execute("query-status")
    assert status["status"] == "inmigrate", status
    print("destination", status["status"])

    try:
        await src.execute("migrate-set-capabilities",
                          {"capabilities": [{"capability": "postcopy-ram", "state": True}]})
        raise AssertionError("postcopy-ram accepted")
    except ExecuteError as e:
        print("refused", e.error.error.class_)

    with src.listener() as sl, dst.listener() as dl:
        await dst.execute("migrate-incoming", {"uri": uri})
        await src.execute("migrate", {"uri": uri})
        seen, others = await statuses(sl)
        assert seen == ["setup", "active", "completed"], seen
        assert "STOP" in others, others
        print("source events", " ".join(seen))
        seen, others = await statuses(dl)
        assert seen == ["setup", "active", "completed"] or seen == ["active", "completed"], seen
        if "RESUME" not in others:
            ev = await asyncio.wait_for(dl.get(), 10)
            assert ev["event"] == "RESUME", ev
        print("destination events", " ".join(seen))

    info = await src.execute("query-migrate")
    assert info["status"] == "completed", info
    assert info["ram"]["remaining"] == 0, info
    assert info["ram"]["transferred"] > 0, info
    print("query-migrate completed downtime", info["downtime"])
    s = await src.execute("query-status")
    d = await dst.execute("query-status")
    assert s["status"] == "postmigrate", s
    assert d == {"running": True, "status": "running"}, d
    print("source", s["status"], "destination", d["status"])
    for q in (src, dst):
        await q.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
