"""`tollway` as a process: the command line, crashes, reloads, soak, the README's own words."""
