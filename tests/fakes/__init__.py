"""Real loopback servers standing in for the outside world in tests, crash tests and benchmarks.

- `sendgrid_server.FakeSendGrid`: an HTTP server speaking SendGrid's v3 Mail Send, checking each
  request and answering from a script (202, 4xx, 429 + Retry-After, 5xx, delays, resets).
- `smtp_server.FakeSmtp`: an aiosmtpd server answering from a script (250, 421/450, 550, drop
  after the final '.'), with optional STARTTLS and AUTH.

Both run in-process (context managers) or as their own process:
`python -m tests.fakes.sendgrid_server --port 0 ...` prints the port on its first stdout line.
"""
