# Imported by the clients that talk past the greeting: a connection `s` to
# the server given as the first argument, a `wait(code)` for a reply, and
# the greeting and the EHLO read.
import socket, sys
s = socket.create_connection((sys.argv[1], 25), timeout=30)
buf = b""
def wait(code):
    global buf
    while not any(l.startswith(code + b" ") for l in buf.split(b"\r\n")):
        d = s.recv(65536)
        if not d: raise SystemExit("closed early: %r" % buf)
        buf += d
    buf = b""
wait(b"220")
s.sendall(b"EHLO c\r\n"); wait(b"250")
