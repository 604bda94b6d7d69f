# Imported by the clients that stop in DATA: the connection of `greeted`
# (`s`, `wait`), then MAIL, RCPT and DATA up to the 354.
from greeted import s, wait
s.sendall(b"MAIL FROM:<a@c.test>\r\n"); wait(b"250")
s.sendall(b"RCPT TO:<b@s.test>\r\n"); wait(b"250")
s.sendall(b"DATA\r\n"); wait(b"354")
