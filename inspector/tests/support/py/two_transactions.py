# One session, two transactions: the first to three recipients with a body
# line over 998 octets (the default policy's log-only criterion), the
# second to one. Prints the client's port and each message's size.
# python3 two_transactions.py SERVER
import smtplib, sys
s = smtplib.SMTP(timeout=30, local_hostname="client.test")
s.connect(sys.argv[1], 25)
print("port:", s.sock.getsockname()[1])
first = b"Subject: one\r\n\r\n" + b"b" * 1500 + b"\r\n"
second = b"Subject: two\r\n\r\nshort\r\n"
s.sendmail("a@client.test", ["x@server.test", "y@server.test", "z@server.test"], first)
s.sendmail("b@client.test", ["w@server.test"], second)
print("sizes:", len(first), len(second))
s.quit()
