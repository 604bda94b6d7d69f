# Sends a message and half-closes right after its final `.`; prints what
# it then reads.
# python3 half_close.py SERVER
import socket
from to_data import s
s.sendall(b"Subject: hc\r\n\r\nhalf close\r\n.\r\n")
s.shutdown(socket.SHUT_WR)
rest = b""
while True:
    d = s.recv(65536)
    if not d: break
    rest += d
print(rest.decode())
