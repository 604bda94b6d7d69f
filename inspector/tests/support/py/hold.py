# Opens a session, reads the greeting, waits SECONDS, and prints whether
# the session is still open then (NOOP answered 250).
# python3 hold.py SERVER SECONDS
import socket, sys, time

s = socket.create_connection((sys.argv[1], 25), timeout=30)
f = s.makefile("rb")
f.readline()
time.sleep(float(sys.argv[2]))
try:
    s.sendall(b"NOOP\r\n")
    line = f.readline().decode(errors="replace").rstrip()
except OSError as e:
    line = "<error %s>" % e
print(line or "<closed>", flush=True)
