# Sends the message in FILE N times, a session each, and prints the
# seconds each session took.
# python3 send_timed.py SERVER FILE N
import smtplib, sys, time
host, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(path, "rb").read()
for _ in range(n):
    t = time.perf_counter()
    s = smtplib.SMTP(host, 25, timeout=60)
    s.sendmail("a@client.test", ["b@server.test"], data)
    s.quit()
    print(time.perf_counter() - t)
