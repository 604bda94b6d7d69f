# Sends each file named after the server as one message, all in one SMTP
# session, and prints the server's reply to each end of data.
# python3 send.py SERVER FILE...
import smtplib, sys
host = sys.argv[1]
s = smtplib.SMTP(timeout=60)
print("banner:", s.connect(host, 25))
print(s.ehlo()[0])
for path in sys.argv[2:]:
    data = open(path, "rb").read()
    s.sendmail("a@client.test", ["b@server.test"], data)
    print("sent", path)
s.quit()
