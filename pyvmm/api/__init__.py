"""The per-VM control socket: a Unix socket speaking JSON lines (docs/API.md), its server and its client."""
