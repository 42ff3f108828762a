"""Drives Kestrel with qemu.qmp's QMPClient, the asyncio client QEMU's own tooling uses.

usage: qmp_client.py SOCKET   (Kestrel started with -S and a tiny guest)
Prints one line per check; exits non-zero on the first failure.
"""
import asyncio
import sys

from qemu.qmp import QMPClient, ExecuteError


async def main(sock: str) -> None:
    qmp = QMPClient("kestrel-test")
    await qmp.connect(sock)  # reads the greeting, negotiates capabilities
    print("greeting", qmp.greeting.QMP.version["package"])

    status = await qmp.execute("query-status")
    assert status == {"running": False, "status": "prelaunch"}, status
    print("query-status", status["status"])

    with qmp.listener() as listener:
        await qmp.execute("cont")
        ev = await asyncio.wait_for(listener.get(), 10)
        assert ev["event"] == "RESUME", ev
        print("event", ev["event"])
        await qmp.execute("stop")
        ev = await asyncio.wait_for(listener.get(), 10)
        assert ev["event"] == "STOP", ev
        print("event", ev["event"])

    try:
        await qmp.execute("watchdog-set-action", {"action": "bogus"})
        raise AssertionError("bogus action accepted")
    except ExecuteError as e:
        assert e.error.error.class_ == "GenericError", e.error
        print("error", e.error.error.desc)

    # The connection survives errors, and ids are matched by the client.
    kvm = await qmp.execute("query-kvm")
    assert kvm == {"enabled": True, "present": True}, kvm
    print("query-kvm ok")

    with qmp.listener("SHUTDOWN") as listener:
        await qmp.execute("quit")
        ev = await asyncio.wait_for(listener.get(), 10)
        assert ev["data"] == {"guest": False, "reason": "host-qmp-quit"}, ev
        print("event SHUTDOWN", ev["data"]["reason"])
    # After quit the server closes the connection, as QEMU does; qemu.qmp reports
    # that as EOFError from disconnect() (QEMU's own machine.py ignores it the same way).
    try:
        await qmp.disconnect()
    except EOFError:
        pass


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
