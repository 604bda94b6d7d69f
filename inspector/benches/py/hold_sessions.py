# Opens N sessions, each past EHLO, prints `ready` and holds them for 5 s.
# python3 hold_sessions.py SERVER N
import socket, sys, time
conns = []
for i in range(int(sys.argv[2])):
    s = socket.create_connection((sys.argv[1], 25), timeout=30)
    s.recv(1000)
    s.sendall(b"EHLO c\r\n")
    got = b""
    while b"250 " not in got:
        got += s.recv(1000)
    conns.append(s)
print("ready", flush=True)
time.sleep(5)
