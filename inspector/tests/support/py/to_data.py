# Imported by the clients that stop in DATA: a connection `s` to the
# server given as the first argument, a `wait(code)` for a reply, and EHLO,
# MAIL, RCPT and DATA up to the 354.
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
s.sendall(b"MAIL FROM:<a@c.test>\r\n"); wait(b"250")
s.sendall(b"RCPT TO:<b@s.test>\r\n"); wait(b"250")
s.sendall(b"DATA\r\n"); wait(b"354")
