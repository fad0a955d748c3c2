"""runmaker files as a shared queue: claiming lines, judging stale claims, running them.

`claims` records which shoal runner holds which line and judges lines left running;
`driver` is `shoal run` on a runmaker file; `output` is runmaker4's live lines and log;
`guard` keeps a runner's claims until its jobs are gone; `listen` serves workers on other
hosts (runmaker4-server's role).
"""
