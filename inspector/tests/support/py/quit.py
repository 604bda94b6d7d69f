# EHLO and QUIT, then the end MODE names; prints its local port, and
# what it read.
#   unread  closes once the 221 has arrived, without reading it and before
#           its kernel acknowledged it (as smtp-source does): the close is a
#           RST, and the 221 stays unacknowledged at the other end
#   open    reads the 221 and the FIN after it, then stays open and silent
#           for 2 s before it closes
# python3 quit.py SERVER MODE
import select, socket, sys, time
from greeted import s, wait
print("port:", s.getsockname()[1])
if sys.argv[2] == "unread":
    # Delayed acknowledgments from here on: the 221 waits unacknowledged.
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
    s.sendall(b"QUIT\r\n")
    # Readable (the 221 has arrived) without reading it.
    if not select.select([s], [], [], 10)[0]: raise SystemExit("no 221")
    s.close()
    print("closed unread")
else:
    s.sendall(b"QUIT\r\n"); wait(b"221")
    print("221")
    t = time.monotonic()
    if s.recv(1) == b"":
        print("EOF after %.3f s" % (time.monotonic() - t))
    time.sleep(2)
    s.close()
