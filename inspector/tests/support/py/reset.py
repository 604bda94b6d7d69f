# EHLO, then VRFY; prints how the connection ended: FIN or RST.
# python3 reset.py SERVER
import socket, sys, time
s = socket.create_connection((sys.argv[1], 25), timeout=30)
print(s.recv(1000))
s.sendall(b"EHLO c\r\n")
time.sleep(0.5)
print(s.recv(1000)[:3])
s.sendall(b"VRFY root\r\n")
try:
    while True:
        d = s.recv(1000)
        if not d:
            print("FIN")
            break
        print("data", d)
except ConnectionResetError:
    print("RST")
