# Two sessions under `max-sessions = 1`: prints what the second gets, then
# how long the first, left idle, lasts and what it gets.
# python3 over_max_sessions.py SERVER
import socket, sys, time
a = socket.create_connection((sys.argv[1], 25), timeout=30)
print("first:", a.recv(1000))
b = socket.create_connection((sys.argv[1], 25), timeout=30)
got = b""
while True:
    d = b.recv(1000)
    if not d: break
    got += d
print("second:", got)
start = time.time()
got = b""
while True:
    d = a.recv(1000)
    if not d: break
    got += d
print("idle: %r after %.1f s" % (got, time.time() - start))
