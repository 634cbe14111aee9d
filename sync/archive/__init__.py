"""The database, and the one door to it: connections and URLs (`engine`), the schema
(`models`, `schema`), one writer per source (`locks`), saving tasks and what runs need
(`store`, `runs`), the image job's rows (`images`), export and re-derivation, and read-only
SQL (`readonly`).

It never talks to a server: what it stores is handed to it, already fetched.
"""
