"""One task and a page of tasks, as plain data: a task's stored id, its fingerprint (content
hash) and its archive row (`records`), and a page of them made ready to save (`batch`).

Pure CPU work: nothing here does I/O, talks to a server or a database, or imports SQLAlchemy
or pydantic, so the fetch process runs the same code as the writer.
"""
