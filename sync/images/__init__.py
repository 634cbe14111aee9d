"""The pictures (and videos) tasks link to: the image client (`client`: no credentials,
public addresses only) and the image job (`job`: links found in archived tasks, downloads
verified and kept by content hash, `images verify`).

It never talks to a task server and never sends a credential; its rows go through the
archive (`sync.archive.images`).
"""
