#!/usr/bin/env python3
"""MSG_ZEROCOPY on this machine: does it save the send copy of large Produce writes?

Issue #12 asks to try MSG_ZEROCOPY (Linux 4.14+, Documentation/networking/msg_zerocopy.rst)
for the proxy's large Produce writes. Before wiring it into `net::write_loop` (it needs
`unsafe` sendmsg/recvmsg on the error queue, which the crate forbids, and holding every
written `Bytes` until the kernel's completion notification), this measures what it does
to the sender's CPU per GB on the paths a mirror's target link takes here, with writes
the size the proxy gathers (`--write-bytes`, default 1 MiB):

  * loopback (127.0.0.1): the proxy next to a broker on the same host;
  * veth between two network namespaces made here (`--veth`, needs root): the closest
    this machine has to a NIC.

Each path is measured with plain `send` and with `MSG_ZEROCOPY`, interleaved, `--reps`
times; the table shows medians of the sender's CPU seconds per GB (getrusage of the
sending process only) and MB/s, and how many zerocopy sends the kernel reported as
copied after all (`SO_EE_CODE_ZEROCOPY_COPIED` in the completion notification): a copy
the kernel made anyway means no saving is possible on that path.

    python3 tools/bench/zerocopy.py [--gb 2] [--reps 5] [--write-bytes 1048576] [--veth]
"""

import argparse
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import time

SO_ZEROCOPY = 60
MSG_ZEROCOPY = 0x4000000
MSG_ERRQUEUE = 0x2000
IP_RECVERR = 11
SO_EE_ORIGIN_ZEROCOPY = 5
SO_EE_CODE_ZEROCOPY_COPIED = 1
# struct sock_extended_err { u32 errno; u8 origin, type, code, pad; u32 info, data; }
EE = struct.Struct("=IBBBBII")


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def reap(sock, outstanding, copied):
    """Reads zerocopy completions from the error queue; returns (outstanding, copied)."""
    while True:
        try:
            _, anc, _, _ = sock.recvmsg(0, 4096, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return outstanding, copied
        for level, kind, data in anc:
            if level != socket.IPPROTO_IP or kind != IP_RECVERR or len(data) < EE.size:
                raise SystemExit(f"unexpected control message on the error queue: level {level} type {kind}")
            err, origin, _, code, _, lo, hi = EE.unpack_from(data)
            if origin != SO_EE_ORIGIN_ZEROCOPY or err != 0:
                raise SystemExit(f"error queue: origin {origin} errno {err}")
            done = hi - lo + 1
            outstanding -= done
            if code & SO_EE_CODE_ZEROCOPY_COPIED:
                copied += done


def send_all(addr, total, write_bytes, zerocopy):
    """Sends `total` bytes to addr; returns (seconds, cpu seconds, zerocopy sends, copied)."""
    buf = memoryview(os.urandom(write_bytes))
    sock = socket.create_connection(addr)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    flags = 0
    if zerocopy:
        sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        flags = MSG_ZEROCOPY
    sent = calls = outstanding = copied = 0
    t0, c0 = time.monotonic(), cpu_seconds()
    while sent < total:
        view = buf
        while view:
            try:
                n = sock.send(view, flags)
            except OSError as e:
                if e.errno == 105 and zerocopy:  # ENOBUFS: too many pinned pages; reap first
                    outstanding, copied = reap(sock, outstanding, copied)
                    time.sleep(0)
                    continue
                raise
            view = view[n:]
            sent += n
            calls += 1
            if zerocopy:
                outstanding += 1
        if zerocopy and outstanding > 64:
            outstanding, copied = reap(sock, outstanding, copied)
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)  # the receiver closes once it has read everything
    while zerocopy and outstanding > 0:
        outstanding, copied = reap(sock, outstanding, copied)
        time.sleep(0.001)
    t1, c1 = time.monotonic(), cpu_seconds()
    sock.close()
    return t1 - t0, c1 - c0, calls if zerocopy else 0, copied


RECEIVER = r"""
import socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], 0)); l.listen(8)
print(l.getsockname()[1], flush=True)
buf = bytearray(4 << 20)
while True:
    c, _ = l.accept()
    while c.recv_into(buf):
        pass
    c.close()
"""


def receiver(host, netns=None):
    cmd = [sys.executable, "-c", RECEIVER, host]
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    port = int(p.stdout.readline())
    return p, (host, port)


def veth_up():
    run = lambda *a: subprocess.run(a, check=True)
    veth_down()
    run("ip", "netns", "add", "mpzc")
    run("ip", "link", "add", "mpzc0", "type", "veth", "peer", "name", "mpzc1")
    run("ip", "link", "set", "mpzc1", "netns", "mpzc")
    run("ip", "addr", "add", "10.213.9.1/30", "dev", "mpzc0")
    run("ip", "link", "set", "mpzc0", "up")
    run("ip", "netns", "exec", "mpzc", "ip", "addr", "add", "10.213.9.2/30", "dev", "mpzc1")
    run("ip", "netns", "exec", "mpzc", "ip", "link", "set", "mpzc1", "up")
    run("ip", "netns", "exec", "mpzc", "ip", "link", "set", "lo", "up")


def veth_down():
    subprocess.run(["ip", "link", "del", "mpzc0"], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "netns", "del", "mpzc"], stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--write-bytes", type=int, default=1 << 20)
    ap.add_argument("--veth", action="store_true", help="also measure over veth between namespaces (root)")
    a = ap.parse_args()
    total = int(a.gb * 1e9)
    paths = [("loopback", "127.0.0.1", None)]
    if a.veth:
        veth_up()
        paths.append(("veth", "10.213.9.2", "mpzc"))
    rows = []
    try:
        for name, host, netns in paths:
            proc, addr = receiver(host, netns)
            res = {False: [], True: []}
            copied = calls = 0
            for _ in range(a.reps):
                for zc in (False, True):
                    secs, cpu, n, c = send_all(addr, total, a.write_bytes, zc)
                    res[zc].append((total / secs / 1e6, cpu / (total / 1e9)))
                    calls += n
                    copied += c
            proc.kill()
            for zc in (False, True):
                mbs = statistics.median(r[0] for r in res[zc])
                cpu = statistics.median(r[1] for r in res[zc])
                rows.append((name, "MSG_ZEROCOPY" if zc else "send", mbs, cpu, f"{copied}/{calls}" if zc else ""))
    finally:
        if a.veth:
            veth_down()
    print(f"{'path':<9} {'mode':<13} {'MB/s':>8} {'sender CPU-s/GB':>16}  zerocopy sends copied by the kernel")
    for name, mode, mbs, cpu, cp in rows:
        print(f"{name:<9} {mode:<13} {mbs:>8.0f} {cpu:>16.3f}  {cp}")


if __name__ == "__main__":
    main()
