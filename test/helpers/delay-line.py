#!/usr/bin/env python3
"""A one-way delay line for the test network (test/helpers/netns.ts).

This kernel has no netem, so latency between sites is made in user space: the site router
routes outbound inter-site packets into a TUN device; this program reads each packet, holds it
for DELAY_MS and writes it back into the same device, from where the kernel forwards it on.
It is Python, not Node, because attaching to a TUN device needs an ioctl (TUNSETIFF) that Node
cannot make. Throughput is bounded (tens of thousands of packets per second): enough for the
multi-site tests, not for bulk benchmarks.

usage: delay-line.py TUN_NAME DELAY_MS
"""
import collections
import fcntl
import os
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def main() -> None:
    name, delay = sys.argv[1], float(sys.argv[2]) / 1000.0
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    print("ready", flush=True)
    queue: collections.deque = collections.deque()
    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
        readable, _, _ = select.select([fd], [], [], timeout)
        if readable:
            due = time.monotonic() + delay
            while True:
                try:
                    queue.append((due, os.read(fd, 65536)))
                except BlockingIOError:
                    break
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            try:
                os.write(fd, queue.popleft()[1])
            except BlockingIOError:
                pass  # the device queue is full: drop, as a router would


if __name__ == "__main__":
    main()
