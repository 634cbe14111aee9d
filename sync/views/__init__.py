"""What people read from the archive: the report (`report`, `report_html`), `status`, and
Datasette's metadata (`datasette`).

Views only read: they never write to the archive and never start a run.
"""
