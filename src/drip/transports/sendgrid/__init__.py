"""SendGrid v3 Mail Send: one pure core and three clients beside it.

- `protocol`: request bodies (single, fast, bulk), status classification, Retry-After and error
  text; no I/O, no `sendgrid` library, no aiohttp.
- `validate`: what a request drip sends must look like (the test fake and the benchmark's fake
  provider both check requests with it); pure too.
- `official`: the client over the official `sendgrid` library (DRIP_SENDGRID_CLIENT=official).
- `fast`: the aiohttp client, keep-alive and many requests in flight (the default); its HTTP
  step is `http.HttpLoop`, run in a thread or in a second process (`process`).
- `bulk`: bulk mode over the fast client, many subscribers per request (DRIP_BULK=auto).

This package module imports none of them, so that `protocol` stays free of the clients' imports.
"""
