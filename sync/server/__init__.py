"""The task server's side, read-only: the bounded transport (`transport`), the task client
(`client`: credentials, retries, rate limit), what a page of the list is (`pages`), one adapter
per server family (`families`), the read-ahead thread or fetch process (`reader`) and the
drift-aware walk (`walk`).

It only ever reads from a server: it never touches the database (no SQLAlchemy) and needs no
pydantic at run time (the fetch process runs it without either).
"""
